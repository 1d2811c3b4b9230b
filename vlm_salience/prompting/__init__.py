"""Zero-shot VLM prompting: templates, message building, backends (Hugging Face, OpenAI-compatible), answer reading
by label scoring or generate-and-parse, VLM-level salience fusion, and experiments as configs."""
