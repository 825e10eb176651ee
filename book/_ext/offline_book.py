"""Sphinx extension: no thebe in the built pages, so the book needs no CDN.

Jupyter Book 1 always loads sphinx-thebe. With its launch button off, thebe never runs, yet
sphinx-thebe still writes a script with the address of its unpkg.com bundle into every page.
This drops that script, thebe's loader and its per-page configuration before any page is read.
"""
import sphinx_thebe


def _drop_thebe_scripts(app):
    for event, handler in (("env-before-read-docs", sphinx_thebe.init_thebe_core),
                           ("doctree-resolved", sphinx_thebe.update_thebe_context)):
        app.events.listeners[event] = [listener for listener in app.events.listeners.get(event, [])
                                       if listener.handler is not handler]


def setup(app):
    app.connect("builder-inited", _drop_thebe_scripts)  # runs after every extension's setup
    return {"parallel_read_safe": True, "parallel_write_safe": True}
