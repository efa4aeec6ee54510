"""Fakes of external services that tests, and users testing agents offline, run for real.

`core.fakes.model_server.FakeModelServer` is a scripted LLM that speaks the Anthropic Messages and
OpenAI Chat Completions wire protocols. (Imported from its module rather than re-exported here, so
that `python -m core.fakes.model_server` runs it without importing it twice.)
"""
