"""vlm_salience: context-based emotion recognition from a face and the situation around it.

Bayesian cue integration baselines, salience-weighted fusion, VLM prompting and LoRA experts share one data model
(`vlm_salience.data`), one salience concept (`vlm_salience.salience`) and one evaluation (`vlm_salience.metrics`).
"""

__version__ = "0.1.0"
