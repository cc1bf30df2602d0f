"""The agent's web dashboard: server-rendered pages, a little JavaScript, live data by SSE."""
