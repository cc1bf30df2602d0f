"""Project workspaces (the ai_nano loop): init, capture/import, split, and what follows."""
