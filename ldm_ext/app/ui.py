"""The page: shared inputs on top (face photos, prompt, seed, steps, guidance, size,
number of images), then one column per run with its method's own controls, a gallery with
the scores under each image, a score table and the PNGs (settings inside) to download.

One Generate press runs the request on every run in turn, with a progress bar; requests
queue (one at a time on the models, each user gets their own results) and Stop cancels
one. A mistake (a photo without a face, a file that is no image, an empty prompt) is an
error box; a run that cannot take the request (more identities than it supports) is a
warning and an empty column while the others generate."""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from ldm_ext.app.photos import read_uploads
from ldm_ext.app.runs import MAX_IMAGES, LoadedRun, Request, RunResult, generate
from ldm_ext.app.scores import table_rows
from ldm_ext.cli import InputError

TABLE_HEADERS = ["image", "against", "score", "value"]


def example_photos(folder: Path) -> list[Path]:
    """The shipped example photos written to ``folder``: skimage's astronaut (one face)
    and insightface's six-person group photo ``t1.jpg``."""
    import insightface
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = folder / "astronaut.png"
    if not astronaut.exists():
        Image.fromarray(skimage.data.astronaut()).save(astronaut)
    group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return [astronaut, group]


def number(text: str | None, label: str, kind: type) -> int | float | None:
    """An optional number typed in a box: None when empty, else an InputError unless it
    reads as ``kind``."""
    if text is None or not str(text).strip():
        return None
    try:
        return kind(str(text).strip())
    except ValueError:
        raise InputError(f"{label} {text!r}: not {'a whole' if kind is int else 'a'} number") \
            from None


class App:
    """The Gradio Blocks of ``runs``; outputs go under ``out_root``."""

    def __init__(self, runs: Sequence[LoadedRun], out_root: Path | None = None) -> None:
        self.runs = list(runs)
        self.out_root = Path(out_root or tempfile.mkdtemp(prefix="idforge-app-"))
        self.demo = self.build()

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="idforge: compare identity methods") as demo:
            gr.Markdown("## idforge: generate with each run, compare identity scores")
            self.shared = self._shared_inputs()
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", elem_id="stop")
            self.columns = []
            with gr.Row(equal_height=False):
                for k, run in enumerate(self.runs):
                    self.columns.append(self._run_column(run, k))
            inputs = set(self.shared.values()) | {c for col in self.columns for c in col["own"]}
            outputs = [col[name] for col in self.columns for name in ("gallery", "table", "files")]
            event = go.click(self.on_generate, inputs=inputs, outputs=outputs)
            stop.click(None, cancels=[event])
        return demo

    def _shared_inputs(self) -> dict[str, Any]:
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="Face photos (one per identity)", file_count="multiple",
                                 type="filepath", elem_id="photos", height=140)
                gr.Examples([[[str(p)]] for p in example_photos(self.out_root / "examples")],
                            inputs=[photos], label="Example photos")
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", elem_id="prompt",
                                    value="a photo of a person on the beach")
                negative = gr.Textbox(label="Negative prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                    steps = gr.Textbox(label="Steps", placeholder="empty: each run's",
                                       elem_id="steps")
                    guidance = gr.Textbox(label="Guidance", placeholder="empty: each run's",
                                          elem_id="guidance")
                with gr.Row():
                    size = gr.Textbox(label="Size (px, a multiple of 8)", elem_id="size",
                                      placeholder="empty: each run's training resolution")
                    count = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images")
        return {"photos": photos, "prompt": prompt, "negative": negative, "seed": seed,
                "steps": steps, "guidance": guidance, "size": size, "count": count}

    @staticmethod
    def _run_column(run: LoadedRun, k: int) -> dict[str, Any]:
        from ldm_ext.app.controls import control

        with gr.Column(elem_id=f"run-{k}", min_width=320):
            gr.Markdown(f"### {run.label}")
            own = []
            if run.options:
                with gr.Accordion(f"{run.pipe.cfg.method.name} inputs", open=False):
                    own = [control(option) for option in run.options]
            gallery = gr.Gallery(label="Images (identity per photo, CLIP-T)", format="png",
                                 columns=2, elem_id=f"gallery-{k}", height=320)
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores", elem_id=f"scores-{k}",
                                 interactive=False)
            files = gr.File(label="PNG with its settings (reproduce with ldm_ext.generate)",
                            file_count="multiple", elem_id=f"files-{k}", interactive=False)
        return {"own": own, "gallery": gallery, "table": table, "files": files}

    def request(self, data: dict) -> Request:
        """The shared controls' values as a checked Request."""
        s = self.shared
        request = Request(prompt=data[s["prompt"]] or "",
                          negative_prompt=data[s["negative"]] or "",
                          seed=int(data[s["seed"]] or 0),
                          steps=number(data[s["steps"]], "steps", int),
                          guidance=number(data[s["guidance"]], "guidance", float),
                          size=number(data[s["size"]], "size", int),
                          num_images=int(data[s["count"]] or 1))
        request.check()
        return request

    def on_generate(self, data: dict, progress=gr.Progress(track_tqdm=True)) -> list:
        """Generate on every run; the outputs, three per run (gallery, table, files)."""
        try:
            request = self.request(data)
            files = data[self.shared["photos"]] or []
            photos = read_uploads(files, self.runs[0].scorer.detector) if self.runs else []
        except InputError as err:
            raise gr.Error(str(err)) from None
        out_dir = self.out_root / uuid.uuid4().hex
        outputs, refused = [], []
        for k, (run, column) in enumerate(zip(self.runs, self.columns)):
            progress((k, len(self.runs)), desc=f"{run.label}")
            try:
                result = generate(run, request, photos, files,
                                  [data[c] for c in column["own"]], out_dir / f"run{k}")
            except InputError as err:
                refused.append(f"{run.label}: {err}")
                gr.Warning(refused[-1])
                result = RunResult([], [], [])
            names = [Path(f).name for f in files]
            outputs += [[(str(f), c) for f, c in zip(result.files, result.captions)],
                        table_rows(result.scores, names) or None,
                        [str(f) for f in result.files] or None]
        if refused and len(refused) == len(self.runs):
            raise gr.Error("; ".join(refused))
        return outputs

    def launch(self, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
               block: bool = True):
        """Serve the page (requests queue, one at a time on the models)."""
        self.demo.queue(default_concurrency_limit=1)
        return self.demo.launch(server_name=host, server_port=port, share=share,
                                prevent_thread_lock=not block, allowed_paths=[str(self.out_root)],
                                show_error=True, quiet=True)
