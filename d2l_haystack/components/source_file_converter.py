"""Read source files (text, Markdown, HTML, PDF) into Haystack documents with stable ids."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from d2l_haystack.core.errors import InputError
from d2l_haystack.core.textio import MAX_FILE_BYTES, read_text_file, validate_text

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown",
                 ".markdown": "text/markdown", ".rst": "text/x-rst"}
HTML_SUFFIXES = {".html": "text/html", ".htm": "text/html"}
PDF_SUFFIXES = {".pdf": "application/pdf"}


def pdf_supported() -> bool:
    """Whether a PDF text extractor (``pypdfium2`` or ``pypdf``) is installed."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("pypdfium2", "pypdf"))


def supported_suffixes() -> list[str]:
    """File name suffixes this converter reads (PDF only when an extractor is installed)."""
    out = list(TEXT_SUFFIXES) + list(HTML_SUFFIXES)
    if pdf_supported():
        out += list(PDF_SUFFIXES)
    return out


class _TextExtractor(HTMLParser):
    _BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
               "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dt", "dd", "title"}
    _SKIP = {"script", "style", "noscript", "template", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        if tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
            self.parts.append("\n")
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """Visible text of an HTML page and its ``<title>`` (standard library only)."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", html.unescape(text))
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text, parser.title.strip()


def _pdf_to_text(path: Path) -> str:
    try:
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(path))
        try:
            pages = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        finally:
            pdf.close()
        return "\n\n".join(pages)
    except ImportError:
        pass
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise InputError(f"{path}: reading PDF needs 'pypdfium2' or 'pypdf' (pip install pypdf)") from exc
    return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def title_of(text: str, fallback: str = "") -> str:
    """The first heading or non-empty line of a text (shortened), for listings."""
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:80]
    return fallback


def read_source(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read one source file into ``(text, meta)`` with clear errors for bad input.

    :raises InputError: missing file, folder, unknown type, empty, binary or non-UTF-8 content.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")
    if suffix in TEXT_SUFFIXES:
        text, mime, title = read_text_file(path), TEXT_SUFFIXES[suffix], ""
    elif suffix in HTML_SUFFIXES:
        text, title = html_to_text(read_text_file(path))
        mime = HTML_SUFFIXES[suffix]
        validate_text(text, f"{path} (no visible text)")
    elif suffix in PDF_SUFFIXES:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: file is over the {MAX_FILE_BYTES}-byte limit")
        try:
            text = _pdf_to_text(path)
        except InputError:
            raise
        except Exception as exc:  # the PDF libraries raise their own types
            raise InputError(f"{path}: cannot read PDF ({exc})") from exc
        mime, title = PDF_SUFFIXES[suffix], ""
        validate_text(text, f"{path} (no extractable text)")
    else:
        raise InputError(f"{path}: unsupported file type '{suffix or '(none)'}' "
                         f"(supported: {', '.join(supported_suffixes())})")
    resolved = str(path.resolve())
    meta = {"file_path": resolved, "d2l_doc_id": resolved, "file_name": path.name, "file_type": mime,
            "title": title or title_of(text, path.name)}
    return text, meta


@component
class SourceFileConverter:
    """Convert source files into documents, one per file, keyed by the file's absolute path.

    Reads ``.txt``, ``.md``, ``.markdown``, ``.rst``, ``.html``/``.htm`` (visible text, standard
    library parser) and ``.pdf`` (when ``pypdfium2`` or ``pypdf`` is installed). Every document
    gets ``meta["file_path"]`` and ``meta["d2l_doc_id"]`` (the resolved absolute path),
    ``file_name``, ``file_type`` and ``title``. Empty, binary, non-UTF-8 and unsupported files
    raise :class:`~d2l_haystack.core.errors.InputError` naming the file (before any document is
    returned), or are skipped with a warning when ``skip_invalid=True``.

    Usage example::

        from d2l_haystack.components import SourceFileConverter

        docs = SourceFileConverter().run(sources=["manual.md", "faq.html"])["documents"]
        print(docs[0].meta["file_path"], docs[0].content[:60])

    :param skip_invalid: skip unreadable files with a warning instead of raising.
    """

    def __init__(self, skip_invalid: bool = False) -> None:
        self.skip_invalid = skip_invalid

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, skip_invalid=self.skip_invalid)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceFileConverter:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, sources: list[str | Path], meta: dict[str, Any] | None = None) -> dict[str, list[Document]]:
        """Read ``sources``.

        :param sources: file paths.
        :param meta: extra metadata added to every document.
        :returns: ``documents``: one document per readable file.
        :raises InputError: a file cannot be used (unless ``skip_invalid``).
        """
        documents = []
        for source in sources:
            try:
                text, doc_meta = read_source(source)
            except InputError as exc:
                if not self.skip_invalid:
                    raise
                logger.warning("skipping %s", exc)
                continue
            documents.append(Document(content=text, meta={**doc_meta, **(meta or {})}))
        return {"documents": documents}

    @component.output_types(documents=list[Document])
    async def run_async(self, sources: list[str | Path],
                        meta: dict[str, Any] | None = None) -> dict[str, list[Document]]:
        """:meth:`run` for Haystack's ``Pipeline.run_async``: reading the files in a worker thread, so
        the event loop (a server's other requests) is not blocked."""
        return await asyncio.to_thread(self.run, sources, meta)
