"""The control-room web UI: pages, the board's read API and live updates, served by the registry app.

No front-end build step: plain HTML, ES modules and CSS under ``static/``, served by `registry.ui.pages`.
"""
