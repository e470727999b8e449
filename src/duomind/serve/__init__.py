"""Serving: the continuous-batching engine (`engine`), the OpenAI-compatible server (`server`, `protocol`),
incremental detokenisation (`text`) and the `duomind serve` / `duomind chat` verbs (`cli`). Needs the
`[serve]` extra (FastAPI, uvicorn) for the HTTP server only."""
