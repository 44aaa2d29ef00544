from __future__ import annotations

from pathlib import Path

import pytest

from d2l_haystack.components import SourceFileConverter
from d2l_haystack.components.source_file_converter import html_to_text, read_source, supported_suffixes
from d2l_haystack.core.errors import InputError


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica (no PDF library needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


class TestSourceFileConverter:
    def test_reads_text_markdown_html(self, samples_dir: Path):
        files = sorted(samples_dir.iterdir())
        docs = SourceFileConverter().run(sources=files)["documents"]
        assert len(docs) == len(files) == 4
        by_name = {d.meta["file_name"]: d for d in docs}
        html = by_name["shipping-faq.html"]
        assert "free for orders over 50 euros" in html.content
        assert "console.log" not in html.content and "font-family" not in html.content
        assert html.meta["title"] == "Brightwater shop: shipping and returns"
        assert html.meta["file_type"] == "text/html"
        manual = by_name["kettle-manual.md"]
        assert manual.meta["title"] == "Aurora K2 Smart Kettle: Owner's Manual"
        expected = str((samples_dir / "kettle-manual.md").resolve())
        assert manual.meta["file_path"] == manual.meta["d2l_doc_id"] == expected

    def test_meta_is_added(self, samples_dir: Path):
        doc = SourceFileConverter().run(sources=[samples_dir / "office-handbook.txt"], meta={"team": "ops"})
        assert doc["documents"][0].meta["team"] == "ops"

    @pytest.mark.parametrize("name,content,match", [
        ("empty.txt", b"   \n", "empty"),
        ("blob.txt", b"\x00\x01\x02binary", "binary"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("image.png", b"\x89PNG", "unsupported file type '.png'"),
        ("nothing.html", b"<html><script>x()</script></html>", "no visible text"),
    ])
    def test_bad_input_names_the_file(self, tmp_path: Path, name: str, content: bytes, match: str):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError, match=match) as info:
            SourceFileConverter().run(sources=[path])
        assert name in str(info.value)

    def test_missing_and_folder(self, tmp_path: Path):
        with pytest.raises(InputError, match="no such file"):
            read_source(tmp_path / "missing.md")
        with pytest.raises(InputError, match="is a folder"):
            read_source(tmp_path)

    def test_skip_invalid(self, tmp_path: Path, samples_dir: Path, caplog):
        (tmp_path / "empty.md").write_text("")
        docs = SourceFileConverter(skip_invalid=True).run(
            sources=[tmp_path / "empty.md", samples_dir / "kettle-manual.md"])["documents"]
        assert [d.meta["file_name"] for d in docs] == ["kettle-manual.md"]
        assert "empty.md" in caplog.text

    def test_html_to_text(self):
        text, title = html_to_text("<html><head><title>T</title></head><body><p>a &amp; b</p><ul><li>x</li></ul>"
                                   "<style>p{}</style></body></html>")
        assert title == "T" and "a & b" in text and "- x" in text and "p{}" not in text

    def test_pdf(self, tmp_path: Path):
        if ".pdf" not in supported_suffixes():
            pytest.skip("no PDF extractor installed")
        (tmp_path / "key.pdf").write_bytes(minimal_pdf("The boiler room key is in drawer 7."))
        doc = SourceFileConverter().run(sources=[tmp_path / "key.pdf"])["documents"][0]
        assert "drawer 7" in doc.content and doc.meta["file_type"] == "application/pdf"
        (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing")
        with pytest.raises(InputError, match="broken.pdf"):
            SourceFileConverter().run(sources=[tmp_path / "broken.pdf"])

    def test_supported(self):
        assert {".txt", ".md", ".html"} <= set(supported_suffixes())

    def test_to_dict_from_dict(self):
        conv = SourceFileConverter(skip_invalid=True)
        data = conv.to_dict()
        assert data == {"type": "d2l_haystack.components.source_file_converter.SourceFileConverter",
                        "init_parameters": {"skip_invalid": True}}
        assert SourceFileConverter.from_dict(data).skip_invalid is True
