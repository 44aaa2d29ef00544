"""Hayhooks wrapper ``d2l_index``: add or update documents over HTTP (``POST /d2l_index/run``).

Clients send file contents, never a server-side path: an upload is saved inside the workspace
(``uploads/``, its name reduced to a safe file name) and indexed from there. A server-side path is
accepted only under the folder the operator named with ``d2l serve --index-root``.
"""

from __future__ import annotations

from hayhooks import BasePipelineWrapper

from d2l_haystack.serve import errors, state


class PipelineWrapper(BasePipelineWrapper):
    def setup(self) -> None:
        self.workspace = state.workspace()

    def run_api(self, name: str = "", content: str | None = None, path: str | None = None,
                route: str | None = None) -> dict:
        """Index one document: its text (``name`` + ``content``), or a file under the server's index root.

        :param name: the document's file name (``.md``, ``.txt``, ``.html``); it becomes ``uploads/<name>``.
        :param content: the document text (UTF-8).
        :param path: instead of ``content``: a file under the server's ``--index-root``.
        :param route: force ``d2l`` or ``rag`` (``auto`` clears a forced route).
        """
        with errors.as_http():
            target = errors.upload_target(self.workspace, name, content, path, state.index_root())
            return self.workspace.index_file(target, route=route).to_dict()
