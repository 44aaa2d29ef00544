"""RemoteAdapterGenerator against a local OpenAI-compatible stand-in (the request shape only: the
real vLLM check is ``scripts/vllm_check.sh`` on a GPU machine)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from haystack import Document
from haystack.dataclasses import ChatMessage

from d2l_haystack.components import RemoteAdapterGenerator
from d2l_haystack.core.errors import InputError


@pytest.fixture
def stand_in():
    """An OpenAI-compatible ``/v1/chat/completions`` that records every request and answers
    ``"served by <model>"``."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": f"served by {body['model']}"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()


def test_the_chosen_adapter_is_named_in_the_request(stand_in, monkeypatch):
    url, requests = stand_in
    monkeypatch.setenv("D2L_REMOTE_API_KEY", "k3y")
    gen = RemoteAdapterGenerator(api_base_url=url, base_model="SmolLM2-135M-Instruct",
                                 generation_kwargs={"temperature": 0.0})
    reply = gen.run(messages=[ChatMessage.from_user("How long is the warranty?")],
                    adapter_ids=["/srv/docs/kettle manual.md", "/srv/docs/other.md"],
                    generation_kwargs={"max_new_tokens": 7}, routing={"route": "d2l"})["replies"][0]
    sent = requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["model"] == "srv-docs-kettle-manual.md"
    assert sent["messages"][-1] == {"role": "user", "content": "How long is the warranty?"}
    assert sent["max_tokens"] == 7 and sent["temperature"] == 0.0 and sent["auth"] == "Bearer k3y"
    assert reply.text == "served by srv-docs-kettle-manual.md" and reply.meta["route"] == "d2l"
    assert reply.meta["unapplied_adapters"] == ["/srv/docs/other.md"]
    # no adapter: the base model; retrieved chunks go into the prompt
    reply = gen.run(messages="What changed in 2.4?", documents=[Document(content="2.4 added dark mode.",
                                                                        meta={"file_path": "log.md"})])["replies"][0]
    assert requests[-1]["model"] == "SmolLM2-135M-Instruct" and "2.4 added dark mode." in \
        requests[-1]["messages"][-1]["content"]
    assert reply.meta["route"] == "rag" and reply.meta["chunks"][0]["source"] == "log.md"
    with pytest.raises(InputError, match="non-empty user message"):
        gen.run(messages=[ChatMessage.from_user("  ")])
    again = RemoteAdapterGenerator.from_dict(gen.to_dict())
    assert again.api_base_url == url and again.generation_kwargs == {"temperature": 0.0}


def test_a_chunk_group_export_is_picked_by_the_question(stand_in, tmp_path: Path, adapter_factory):
    """A long document exported in chunk groups: the keys send the question to its group's LoRA."""
    from d2l_haystack.core.serving import export_for_serving, lora_name

    url, requests = stand_in
    adapter = adapter_factory(rank=4)
    # four chunks of rank 4 + a bias block of 4: at max rank 8 each group holds one chunk
    a, b = adapter.factors["down_proj"]
    adapter.factors["down_proj"] = (torch.cat([a[:, :4]] * 4 + [a[:, 4:]], dim=1),
                                    torch.cat([b[:, :4]] * 4 + [b[:, 4:]], dim=1))
    adapter.num_chunks = 4
    adapter.keys = torch.eye(4, 384)
    adapter.key_chunks = torch.arange(4)
    adapter.key_model = "all-minilm-l6-v2"
    doc_id = "/srv/docs/handbook.md"
    export_for_serving(adapter, tmp_path / lora_name(doc_id), name=lora_name(doc_id), max_rank=8)
    gen = RemoteAdapterGenerator(api_base_url=url, base_model="base", exports=str(tmp_path))
    question = torch.zeros(384)
    question[2] = 1.0  # nearest the key of chunk 2
    gen.run(messages="What does chapter three say?", adapter_ids=[doc_id], query_embedding=question.tolist())
    assert requests[-1]["model"] == "srv-docs-handbook.md-g002"


def test_a_workspace_export_names_what_the_generator_asks_for(workspace_factory, docs_dir: Path, tmp_path: Path,
                                                              stand_in, capsys):
    import json as _json

    from d2l_haystack.cli import main

    url, requests = stand_in
    ws = workspace_factory()
    ws.index_file(docs_dir / "kettle-manual.md")
    assert main(["workspace", "export-lora", str(tmp_path / "exports"), "-w", str(ws.path)]) == 0
    assert "vllm serve" in capsys.readouterr().out
    doc_id = str((docs_dir / "kettle-manual.md").resolve())
    gen = RemoteAdapterGenerator(api_base_url=url, base_model="base", exports=str(tmp_path / "exports"))
    name = gen.served_name(doc_id)
    config = _json.loads((tmp_path / "exports" / name / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] and config["r"] in (1, 8, 16, 32, 64, 128, 256, 320, 512)
    gen.run(messages="How long is the warranty?", adapter_ids=[doc_id])
    assert requests[-1]["model"] == name
