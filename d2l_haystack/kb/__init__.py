"""A knowledge base on disk: its settings, the workspace, its pipelines and the file watcher.

* :mod:`.settings`: the one set of workspace defaults and the ``workspace.json`` file;
* :mod:`.pipelines`: the Haystack pipelines (Python builders and the YAML loader);
* :mod:`.workspace`: :class:`~.workspace.Workspace`, files -> routes -> adapter store | FAISS;
* :mod:`.watcher`: :class:`~.watcher.DocumentWatcher`, folders -> workspace updates.

The watcher uses the workspace, the workspace runs the pipelines' components, the pipelines
read the settings; nothing here imports upwards.
"""
