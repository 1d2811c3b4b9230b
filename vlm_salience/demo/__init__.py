"""`vlm-salience demo`: its steps call the library; nothing in the library imports this package."""

from vlm_salience.demo.run import run_demo

__all__ = ["run_demo"]
