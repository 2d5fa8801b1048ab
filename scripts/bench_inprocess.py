"""The in-process baseline of `mlx-sidecar bench`: the bench's workload, run in one Python
process that calls mlx-lm directly, with no transport in between.

    bench_inprocess.py prepare --model M --out-dir DIR --prompt-tokens N --count K
    bench_inprocess.py run --model M --tokenizer-dir DIR --workload FILE|-
    bench_inprocess.py serve --model M --tokenizer-dir DIR --workload FILE
    bench_inprocess.py http-server [--dequantize MODE] MLX_LM_SERVER_ARGS...

``prepare`` loads the model with the worker's own loader (``mlx_worker.model.load_model``, so
the same weights and the same dequantization as the worker), writes DIR as an mlx-lm model
directory holding exactly those weights (what ``python -m mlx_lm server`` is pointed at), and
prints the workload's prompts as JSON: K distinct prompts of N tokens each, cut from a fixed
English text at different places (so that no prompt is a prefix of another and no prefix cache
can help), each with a text whose tokenization by both tokenizers (the worker's and mlx-lm's)
gives exactly those ids.

``run`` reads a workload (JSON, from a file or stdin), loads the model the same way, and runs
it: one stream with ``mlx_lm.stream_generate``, several with ``mlx_lm.BatchGenerator``, greedy,
with the end-of-sequence tokens banned by a logit bias (the same on every path), so that every
request generates exactly ``max_tokens`` tokens. Concurrency is a closed loop: ``c`` requests in
flight, a new one inserted as soon as one finishes. It prints JSON: per level, one record per
request (times in seconds from the level's start), the level's wall time and this process's
CPU time; and the process's peak resident memory.

``serve`` loads the model and warms up as ``run`` does, then runs single requests or waves of
requests (a closed loop of ``c`` streams) on demand (one JSON line in, one JSON line out), so
that the bench's paired mode (``--paired``) can alternate them between it and the worker, both
kept running.

``http-server`` runs mlx-lm's own HTTP server (``python -m mlx_lm server``), after importing
the worker's model package so that it uses the same CPU BLAS as the worker.

Every generated token is detokenized as it comes, as the worker and mlx-lm's server do.
Run with PYTHONPATH=sidecar (the worker package) and the worker's interpreter.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Text the prompts are cut from: plain English, long enough for many distinct windows.
CORPUS = """\
The history of the city begins with a small settlement on the bank of a slow river, where
traders stopped to rest their animals and exchange news from the roads to the north and south.
Over the centuries the settlement grew into a market town, then into a walled city with a
cathedral, a university and a harbour that sent ships to every port of the known world.
Its streets were narrow and crooked, built without any plan, and visitors often said that a
stranger could walk for an hour and find himself back where he had started. The merchants who
ruled the city kept careful records of everything they bought and sold, and many of those
records survive today in the archives beneath the old town hall. From them historians have
learned how much bread cost in a year of famine, how many barrels of wine arrived from the
valleys each autumn, and which families rose to wealth and which fell into ruin. In the
nineteenth century the walls were torn down to make room for wide boulevards, railway stations
and factories, and the population doubled in a single generation. Workers came from the
countryside looking for wages, and the old quarters filled with crowded houses, workshops and
taverns. Reformers wrote angry pamphlets about the conditions they found there: the lack of
clean water, the smoke that hung over the rooftops, the children who worked from dawn until
dark. Slowly things changed. Engineers built sewers and reservoirs, the city council opened
schools and hospitals, and a network of trams carried people from the new suburbs to the
centre. By the middle of the twentieth century the city had become a place of museums, parks
and broad avenues lined with trees, although the memory of its harder past was never far away.
Today students from many countries study at the university, tourists photograph the cathedral
and the harbour, and the market in the main square still opens every morning, as it has for
more than eight hundred years. Farmers bring cheese, honey, apples and bread; fishermen sell
the night's catch from wooden tables; and the smell of coffee drifts from the small cafes that
line the square. Scientists at the university study the river itself, measuring its flow,
its temperature and the fish that live in it, and they have found that the water is cleaner
now than at any time since records began. Each spring a festival celebrates the founding of the
city with music, processions and a great bonfire on the riverbank, and for one night the old
streets are full of people singing songs whose words few of them fully understand. A careful
reader of the city's chronicles will notice how often the same worries return: floods in a wet
year, fires in a dry one, quarrels between the guilds, debates about taxes and the price of
grain. Yet the chronicles also record small kindnesses, such as the baker who fed the poor
during a hard winter, the doctor who stayed in the city during the plague, and the teacher who
opened a school for girls when the council refused to pay for one. These stories are told to
children in the city's schools, and every year a prize is given to a citizen whose work has
made life better for others. The prize is modest, a silver medal and a small sum of money,
but it is held in great honour, and the list of those who have received it reads like a short
history of the city's conscience.
"""


def _log(message: str) -> None:
    print(f"bench_inprocess: {message}", file=sys.stderr, flush=True)


def _load(args: argparse.Namespace):  # -> mlx_worker.model.LoadedModel
    from mlx_worker.model import load_model

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    return load_model(args.model, cache_dir=cache_dir, dequantize=args.dequantize)


# --- prepare -----------------------------------------------------------------------------


def _model_dir(args: argparse.Namespace) -> Path:
    """The mlx-lm directory the worker's loader built the model from (a GGUF's conversion)."""
    from mlx_worker.model import gguf_convert
    from mlx_worker.model.default import default_model_path

    path = Path(args.model).expanduser() if args.model else default_model_path()
    if path.is_dir():
        return path
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else None
    return gguf_convert.converted_dir(path.resolve(), cache_dir)[0]


def _export_mlx_lm_dir(loaded: Any, model_dir: Path, out_dir: Path) -> None:
    """Writes the loaded model, with its weights exactly as they are in memory (dequantized
    ones included), as an mlx-lm directory: what mlx-lm's own server loads."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out_dir.mkdir(parents=True)
    for f in model_dir.iterdir():
        if (
            f.is_file()
            and f.suffix != ".safetensors"
            and f.name != "model.safetensors.index.json"
        ):
            shutil.copy2(f, out_dir / f.name)
    config = json.loads((model_dir / "config.json").read_text())
    if loaded.description.dequantized:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    weights = dict(tree_flatten(loaded.model.parameters()))
    mx.save_safetensors(
        str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"}
    )


def _windows(token_ids: list[int], length: int, count: int) -> list[list[int]]:
    """`count` windows of `length` ids, starting at spread-out offsets (wrapping around)."""
    if length >= len(token_ids):
        raise SystemExit(
            f"--prompt-tokens {length} is too long for the corpus ({len(token_ids)} tokens)"
        )
    span = len(token_ids) - length
    step = max(1, span // max(1, count))
    out = []
    for i in range(count):
        start = (i * step) % (span + 1)
        out.append(token_ids[start : start + length])
    return out


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    import mlx.core as mx

    return {
        "python": platform.python_version(),
        "mlx": version("mlx"),
        "mlx_lm": version("mlx-lm"),
        "device": str(mx.default_device()),
        "platform": platform.platform(),
    }


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    from mlx_lm.utils import load_tokenizer

    loaded = _load(args)
    out_dir = Path(args.out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _export_mlx_lm_dir(loaded, _model_dir(args), out_dir)
    hf = load_tokenizer(out_dir)
    worker_tok = loaded.tokenizer

    # Token ids of the corpus repeated, without special tokens; each prompt is a window of it,
    # prefixed with a distinct number so that prompts differ from their first token.
    corpus_ids = worker_tok.encode(
        CORPUS.replace("\n", " ") * 4, add_special_tokens=False
    )
    prompts = []
    seen: set[tuple[int, ...]] = set()
    for i, window in enumerate(
        _windows(corpus_ids, args.prompt_tokens, args.count * 4)
    ):
        if len(prompts) == args.count:
            break
        text = f"{i}. " + worker_tok.decode(window)
        ids = worker_tok.encode(text, add_special_tokens=True)[: args.prompt_tokens]
        text = worker_tok.decode(ids, skip_special_tokens=True)
        ids = worker_tok.encode(text, add_special_tokens=True)
        if len(ids) != args.prompt_tokens or tuple(ids[:8]) in seen:
            continue
        if list(hf.encode(text)) != ids:
            continue  # the two tokenizers disagree on this text: take another window
        seen.add(tuple(ids[:8]))
        prompts.append({"ids": ids, "text": text})
    if len(prompts) < args.count:
        raise SystemExit(f"could only build {len(prompts)} of {args.count} prompts")
    description = loaded.description
    return {
        "versions": _versions(),
        "prompts": prompts,
        "eos_token_ids": sorted(worker_tok.eos_token_ids),
        "model": asdict(description)
        if hasattr(description, "__dataclass_fields__")
        else {},
        "mlx_lm_dir": str(out_dir),
    }


# --- run -----------------------------------------------------------------------------------


@dataclass
class Record:
    """One request, times in seconds from the start of its level."""

    start: float
    first_token: float
    last_token: float
    end: float
    tokens: int
    prompt_tokens: int
    text: str
    token_ids: list[int]


def _ban(eos_ids: list[int]) -> list:
    from mlx_lm.sample_utils import make_logits_processors

    return make_logits_processors(logit_bias={i: -1e9 for i in eos_ids})


def _run_single(model, tokenizer, prompts, max_tokens, eos_ids, t0) -> list[Record]:
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(0.0)
    records = []
    for ids in prompts:
        start = time.perf_counter()
        first = last = start
        n = 0
        text = []
        ids_out: list[int] = []
        for response in stream_generate(
            model,
            tokenizer,
            mx.array(ids),
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=_ban(eos_ids),
        ):
            last = time.perf_counter()
            if n == 0:
                first = last
            n = response.generation_tokens
            text.append(response.text)
            ids_out.append(response.token)
        end = time.perf_counter()
        records.append(
            Record(
                start - t0,
                first - t0,
                last - t0,
                end - t0,
                n,
                len(ids),
                "".join(text),
                ids_out,
            )
        )
    return records


def _run_batch(
    model, tokenizer, prompts, max_tokens, eos_ids, concurrency, max_batch, t0
):
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=None,
        completion_batch_size=max_batch,
        prefill_batch_size=min(8, max_batch),
    )
    pending = deque(enumerate(prompts))
    live: dict[int, dict] = {}
    records: dict[int, Record] = {}

    def insert() -> None:
        index, ids = pending.popleft()
        (uid,) = gen.insert(
            [ids], max_tokens=[max_tokens], logits_processors=[_ban(eos_ids)]
        )
        live[uid] = {
            "index": index,
            "start": time.perf_counter(),
            "first": None,
            "n": 0,
            "detok": tokenizer.detokenizer,
            "prompt_tokens": len(ids),
            "ids": [],
        }

    try:
        while pending and len(live) < concurrency:
            insert()
        while live:
            _, responses = gen.next()
            now = time.perf_counter()
            for r in responses:
                state = live[r.uid]
                if state["first"] is None:
                    state["first"] = now
                state["n"] += 1
                state["ids"].append(r.token)
                state["detok"].add_token(r.token)
                if r.finish_reason is not None:
                    state["detok"].finalize()
                    del live[r.uid]
                    records[state["index"]] = Record(
                        state["start"] - t0,
                        state["first"] - t0,
                        now - t0,
                        time.perf_counter() - t0,
                        state["n"],
                        state["prompt_tokens"],
                        state["detok"].text,
                        state["ids"],
                    )
                    if pending:
                        insert()
                else:
                    state["detok"].last_segment  # noqa: B018 - streamed text, as a server does
    finally:
        gen.close()
    return [records[i] for i in sorted(records)]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Baseline:
    """The model loaded as the worker loads it, and the workload's levels run on it."""

    def __init__(self, args: argparse.Namespace, workload: dict[str, Any]) -> None:
        from mlx_lm.utils import load_tokenizer

        self.model = _load(args).model
        self.tokenizer = load_tokenizer(Path(args.tokenizer_dir))
        self.eos_ids = list(workload["eos_token_ids"])
        self.max_batch = int(workload.get("max_batch", 64))
        self.workload = workload

    def run_level(
        self, concurrency: int, prompts: list[list[int]], tokens: int
    ) -> dict[str, Any]:
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        if concurrency == 1:
            records = _run_single(
                self.model, self.tokenizer, prompts, tokens, self.eos_ids, t0
            )
        else:
            records = _run_batch(
                self.model,
                self.tokenizer,
                prompts,
                tokens,
                self.eos_ids,
                concurrency,
                self.max_batch,
                t0,
            )
        wall = time.perf_counter() - t0
        return {
            "concurrency": concurrency,
            "wall_s": wall,
            "cpu_s": _cpu_seconds() - cpu0,
            "requests": [asdict(r) for r in records],
        }

    def warm_up(self) -> None:
        warmup = self.workload.get("warmup", {})
        _warm_up_gpu_kernels(self.model, self.max_batch)
        for level in warmup.get("levels", []):
            self.run_level(
                level["concurrency"], level["prompts"], int(warmup.get("max_tokens", 4))
            )
        _log("warm-up done")


def _read_workload(path: str) -> dict[str, Any]:
    source = sys.stdin if path == "-" else open(path)  # noqa: SIM115
    with source:
        return json.load(source)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(args: argparse.Namespace) -> dict[str, Any]:
    workload = _read_workload(args.workload)
    baseline = _Baseline(args, workload)
    baseline.warm_up()
    levels = []
    for level in workload["levels"]:
        result = baseline.run_level(
            level["concurrency"], level["prompts"], int(workload["max_tokens"])
        )
        n = sum(r["tokens"] for r in result["requests"])
        _log(
            f"concurrency {level['concurrency']}: {n} tokens in {result['wall_s']:.2f} s"
        )
        levels.append(result)
    return {"levels": levels, "peak_rss_bytes": _peak_rss_bytes()}


def _serve(args: argparse.Namespace) -> dict[str, Any]:
    """Requests on demand, for the bench's paired mode: after the warm-up it prints
    ``{"ready": true}``, then answers each stdin line, run as ``run`` runs a level:
    ``{"prompt": [ids], "max_tokens": n}`` (a single request) with the request's record and
    its ``cpu_s``; ``{"concurrency": c, "prompts": [[ids], ...], "max_tokens": n}`` (a wave:
    the prompts as a closed loop of ``c`` streams) with the level's result (its records, wall
    and CPU time). Times are from the line's receipt. At the end of stdin the process's peak
    memory follows (the final line, printed by ``main``)."""
    baseline = _Baseline(args, _read_workload(args.workload))
    baseline.warm_up()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        tokens = int(request["max_tokens"])
        if "prompts" in request:
            level = baseline.run_level(
                int(request["concurrency"]), request["prompts"], tokens
            )
            print(json.dumps(level), flush=True)
            continue
        level = baseline.run_level(1, [request["prompt"]], tokens)
        print(json.dumps({**level["requests"][0], "cpu_s": level["cpu_s"]}), flush=True)
    return {"peak_rss_bytes": _peak_rss_bytes()}


def _warm_up_gpu_kernels(model: Any, max_batch: int) -> None:
    """On a GPU, the worker's row-count warm-up (MLX compiles its kernels on first use, for
    tens of seconds each), so that neither path compiles kernels while it is measured."""
    import mlx.core as mx

    if mx.default_device().type != mx.gpu:
        return
    from mlx_worker.config import parse_args
    from mlx_worker.engine.startup import (
        prefill_plan,
        warm_up_bound,
        warm_up_row_counts,
    )

    config = parse_args(["--socket", "unused", "--max-batch", str(max_batch)])
    plan = prefill_plan(config, on_gpu=True)
    warm_up_row_counts(model, warm_up_bound(plan, max_batch), plan.step_size)


def _prepare_cpu_blas(dequantize: str) -> None:
    """What the worker does first (before MLX is imported): use OpenBLAS for MLX's CPU
    matrix products, unless the weights stay quantized."""
    if dequantize != "off":
        from mlx_worker.model.cpu_blas import prepare_cpu_blas

        prepare_cpu_blas()


def _single_process_distributed() -> None:
    """mlx-lm's server calls ``mx.distributed.init()``, whose default backend tries Open MPI
    first: on a machine that has Open MPI but did not launch this process with ``mpirun`` (the
    H100 machine), that fails in ``MPI_Init`` and the server never starts. Not launched by
    mpirun nor given a hostfile, the server is one process, as the other paths are: give it
    MLX's ring backend, which makes the same group of one without touching MPI."""
    import os

    if "OMPI_COMM_WORLD_SIZE" in os.environ or "MLX_HOSTFILE" in os.environ:
        return
    import mlx.core as mx

    init = mx.distributed.init

    def init_single(strict: bool = False, backend: str = "any") -> Any:
        return init(strict=strict, backend="ring" if backend == "any" else backend)

    mx.distributed.init = init_single


def _http_server(argv: list[str]) -> int:
    """Runs mlx-lm's own server (``mlx_lm.server.main``) with the arguments after
    ``--dequantize MODE``, having prepared the CPU BLAS as the worker does (so all three
    paths multiply matrices with the same library)."""
    dequantize = "auto"
    if argv[:1] == ["--dequantize"] and len(argv) >= 2:
        dequantize, argv = argv[1], argv[2:]
    _prepare_cpu_blas(dequantize)
    _single_process_distributed()
    from mlx_lm.server import main as server_main

    server_args = argv

    sys.argv = ["mlx_lm.server", *server_args]
    server_main()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["http-server"]:
        return _http_server(argv[1:])

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "run", "serve"):
        p = sub.add_parser(name)
        p.add_argument(
            "--model", default=None, help="model path or GGUF (default model if unset)"
        )
        p.add_argument("--cache-dir", default=None)
        p.add_argument("--dequantize", default="auto", choices=["auto", "on", "off"])
    prepare = sub.choices["prepare"]
    prepare.add_argument(
        "--out-dir", required=True, help="where the mlx-lm directory goes"
    )
    prepare.add_argument("--prompt-tokens", type=int, required=True)
    prepare.add_argument("--count", type=int, required=True)
    for name in ("run", "serve"):
        p = sub.choices[name]
        p.add_argument(
            "--tokenizer-dir", required=True, help="the directory `prepare` wrote"
        )
        p.add_argument(
            "--workload",
            required=True,
            help="workload JSON file" + (", or - for stdin" if name == "run" else ""),
        )
    args = parser.parse_args(argv)
    _prepare_cpu_blas(args.dequantize)
    commands = {"prepare": _prepare, "run": _run, "serve": _serve}
    result = commands[args.command](args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
