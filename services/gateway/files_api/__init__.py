"""OpenAI-style files (``/api/v1/files``) and what a runbook request takes from
them: ``jetty.files`` inputs, ``jetty.unzip`` and ``jetty.runbook_path``."""
