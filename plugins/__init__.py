"""Built-in Sandrun plugins, one module each, loadable by entry-point name.

They import from :mod:`worker`; :mod:`worker` never imports them.
"""
