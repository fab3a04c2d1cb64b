"""``xopd-eval``: the modality gap, forgetting, CI gates, spoken test sets, and the offline model zoo.

    xopd-eval gap                      # the embedded default: the zoo cascade on the default task mix
    xopd-eval gap --model Qwen/Qwen2-Audio-7B-Instruct --teacher Qwen/Qwen2-7B-Instruct --backend vllm
    xopd-eval forgetting --base B --model M
    xopd-eval perception --model S    # the gap split into form, hearing and reasoning over speech
    xopd-eval gate --report new/report.json --baseline old/report.json --max-drop 0.02
    xopd-eval synth --tasks navigate --variants clean,noisy-10db --output speech-set/
    xopd-eval divergence --model S --teacher T --tasks arithmetic --output DIR   # or --logdir RUN
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

from tqdm import tqdm

from evalsuite.backends import make_backend
from evalsuite.cache import GenerationCache
from evalsuite.perception import format_perception_markdown, perception_report, run_perception
from evalsuite.reports import REPORT_VERSION, environment, read_report, write_json, write_jsonl
from evalsuite.reports.plot import gap_chart
from evalsuite.run import SPEECH, TEXT, evaluate
from evalsuite.smoke import format_markdown as format_smoke_markdown
from evalsuite.smoke import run_smoke
from evalsuite.speech import parse_variants, synth_task
from evalsuite.speech_check import format_markdown as format_speech_check_markdown
from evalsuite.speech_check import load_transcriber, run_speech_check
from evalsuite.tasks import list_tasks, load_task
from evalsuite.types import GenParams
from xopd.cli_errors import EVAL_ERRORS, run_cli
from xopd.zoo import ZOO, ensure, zoo_dir

# With no --model, `gap` runs the demo world: the aligned speech student against its text teacher (xopd/zoo),
# on a voice the student's alignment heard and one it never heard.
DEFAULT_MODEL = "xopd-demo-student"
DEFAULT_TEACHER = "xopd-demo-teacher"
DEFAULT_GAP_VARIANTS = "hibari,flite-kal"  # seen, held out (xopd.world.align.HELD_OUT_VOICES)
DEFAULT_TASKS = "sums,counting,syllogism,family"  # evalsuite.tasks.DEFAULT_MIX
DEFAULT_LIMIT = 20
COMMANDS = "xopd_eval.commands"  # entry-point group: (subparsers) -> adds a subcommand (see build_parser)
DEFAULT_VARIANTS = "hibari"  # the bundled neural voice: Whisper hears its numbers back (see speech-check)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_bar(desc: str, total: int):
    """A tqdm bar over all requests of a run (cached ones and input failures count as done at once)."""
    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True)


def _load_tasks(args):
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    return [load_task(n, split="test", limit=args.limit, seed=args.seed) for n in names]


def resolve_backend(name: str | None) -> str:
    """``--backend``: as given, else ``vllm`` when vLLM imports here and ``hf`` (with a one-line notice) when not."""
    if name:
        return name
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any broken install means "not usable here"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _log(f"note: vLLM does not import here ({type(exc).__name__}: {first[:120]}); using --backend hf")
        return "hf"
    return "vllm"


def _backend_kwargs(args) -> dict:
    kw: dict = {"trust_remote_code": args.trust_remote_code}
    if args.backend == "hf":
        kw["batch_size"] = args.batch_size
    else:
        kw.update(tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size)
        if args.max_model_len:
            kw["max_model_len"] = args.max_model_len
    return kw


def _run_model(model: str, args, tasks, modes, variants, cache_path: Path, desc: str):
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    backend = make_backend(args.backend, model, **_backend_kwargs(args))
    n_requests = sum((TEXT in modes) + (SPEECH in modes) * (1 if item.audio else len(variants))
                     for t in tasks for item in t.items)
    bar = _progress_bar(desc, n_requests)
    try:
        samples = evaluate(backend, tasks, modes=modes, variants=variants, params=params,
                           cache=GenerationCache(cache_path), progress=bar.update, chunk_size=args.chunk_size,
                           system_prompt=getattr(args, "system_prompt", None))
    finally:
        bar.close()
        backend.close()  # frees the engine before the next model's starts (the fingerprint stays readable)
    return backend, samples, params


def _config(args, model: str, params, backend) -> dict:
    return {
        "model": model,
        "model_fingerprint": backend.fingerprint(),
        "backend": args.backend,
        "batch_size": args.batch_size if args.backend == "hf" else None,
        "gen_params": asdict(params),
        "tasks": args.tasks.split(","),
        "limit": args.limit,
        "variants": args.variants.split(","),
        "seed": args.seed,
        "confidence": args.confidence,
        "n_boot": args.n_boot,
        "system_prompt": args.system_prompt,
    }


def _cmd_gap(args: argparse.Namespace) -> int:
    from evalsuite.reports.gap import format_gap_markdown, gap_report  # late: scipy (the statistics)

    t0 = time.perf_counter()
    out = Path(args.output)
    model = args.model or DEFAULT_MODEL
    if not args.model:
        args.teacher = args.teacher or DEFAULT_TEACHER
        args.variants = args.variants or DEFAULT_GAP_VARIANTS
        _log(f"no --model: running the embedded default ({model} against the teacher {args.teacher}, voices "
             f"{args.variants}, on {args.tasks}, {args.limit} items each)")
    args.variants = args.variants or DEFAULT_VARIANTS
    tasks = _load_tasks(args)
    # A text LLM cannot hear: every spoken item would fail and the "gap" would be the text accuracy. Refuse it
    # from its config (cheap: no weights load, nothing is generated or written).
    from evalsuite.backends.resolve import resolve_model  # late, as the next two: torch and transformers
    from xopd.cascade import DEFAULT_ASR
    from xopd.loading import ModelLoadError

    if resolve_model(model, trust_remote_code=args.trust_remote_code).kind == "text":
        raise ModelLoadError(
            f"model {model!r} is a text LLM: it cannot hear the spoken items that `gap` compares with the text "
            "ones. Use a speech LLM, or a cascade (--model cascade:<asr>+<llm>, e.g. "
            f"cascade:{DEFAULT_ASR}+{model}); a text LLM can be the --teacher."
        )
    out.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.variants)
    cache = Path(args.cache) if args.cache else out / "cache.jsonl"
    backend, samples, params = _run_model(model, args, tasks, (TEXT, SPEECH), variants, cache, "student")
    teacher_samples = None
    if args.teacher:
        _, teacher_samples, _ = _run_model(args.teacher, args, tasks, (TEXT,), (), cache, "teacher")
    report = gap_report(samples, teacher_samples=teacher_samples, confidence=args.confidence, n_boot=args.n_boot,
                        seed=args.seed)
    report.update(version=REPORT_VERSION, config=_config(args, model, params, backend) | {"teacher": args.teacher},
                  environment=environment(), wall_time_s=round(time.perf_counter() - t0, 1))
    rows = [s.as_dict() | {"model": model} for s in samples]
    rows += [s.as_dict() | {"model": args.teacher} for s in teacher_samples or []]
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "report.json", report)
    gap_chart(report, out / "gap.png")
    print(format_gap_markdown(report))
    print(f"\nwall time {report['wall_time_s']} s; report {out / 'report.json'}, samples {out / 'samples.jsonl'}, "
          f"chart {out / 'gap.png'}")
    return 0


def _cmd_forgetting(args: argparse.Namespace) -> int:
    from evalsuite.reports.forgetting import (  # late: scipy and jiwer
        TRANSCRIBE_INSTRUCTION,
        format_forgetting_markdown,
        forgetting_report,
        paired_wer_delta,
        word_errors,
    )

    t0 = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(args)
    variants = parse_variants(args.variants)
    cache = Path(args.cache) if args.cache else out / "cache.jsonl"
    results = {}
    for role, model in (("base", args.base), ("model", args.model)):
        backend, samples, params = _run_model(model, args, tasks, (TEXT, SPEECH), variants, cache, role)
        asr_tasks = [replace(t, spec=replace(t.spec, instruction=TRANSCRIBE_INSTRUCTION)) for t in tasks]
        _, asr_samples, _ = _run_model(model, args, asr_tasks, (SPEECH,), variants[:1], cache, f"{role} asr")
        results[role] = (backend, samples, params, asr_samples)
    # Items whose audio could not be fed to a model say nothing about transcription: leave them out, and say so.
    b_asr = {s.id: s for s in results["base"][3]}
    m_asr = {s.id: s for s in results["model"][3]}
    ids = [i for i in b_asr if i in m_asr and not b_asr[i].error and not m_asr[i].error]
    refs = [b_asr[i].prompt for i in ids]
    err_b, words = word_errors(refs, [b_asr[i].response for i in ids])
    err_m, _ = word_errors(refs, [m_asr[i].response for i in ids])
    asr = paired_wer_delta(words, err_b, err_m, confidence=args.confidence, n_boot=args.n_boot, seed=args.seed)
    asr["excluded_items"] = len(b_asr) - len(ids)
    report = forgetting_report(results["base"][1], results["model"][1], asr=asr, confidence=args.confidence,
                               n_boot=args.n_boot, seed=args.seed)
    backend, _, params, _ = results["model"]
    report.update(version=REPORT_VERSION, config=_config(args, args.model, params, backend) | {"base": args.base},
                  environment=environment(), wall_time_s=round(time.perf_counter() - t0, 1))
    rows = [s.as_dict() | {"model": m, "role": r} for r, m in (("base", args.base), ("model", args.model))
            for s in results[r][1] + results[r][3]]
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "report.json", report)
    print(format_forgetting_markdown(report))
    print(f"\nwall time {report['wall_time_s']} s; report {out / 'report.json'}")
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from evalsuite.reports.gate import comparability_notes, format_gate, run_gate  # late: scipy

    try:
        report = read_report(Path(args.report))
        baseline = read_report(Path(args.baseline)) if args.baseline else None
        rows = run_gate(report, baseline, max_drop=args.max_drop, confidence=args.confidence, n_boot=args.n_boot)
    except ValueError as exc:
        print(f"xopd-eval gate: {exc}", file=sys.stderr)
        return 2
    print(format_gate(rows, max_drop=args.max_drop, confidence=args.confidence))
    for note in comparability_notes(report, baseline):
        print(f"note: runs differ — {note}")
    failed = [r for r in rows if not r.passed]
    if failed:
        print(f"\nGATE FAILED on {len(failed)} of {len(rows)}: " + ", ".join(f"{r.task}/{r.mode}" for r in failed))
        return 1
    print(f"\ngate passed ({len(rows)} task/mode pairs)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    tasks = _load_tasks(args)
    variants = parse_variants(args.variants)
    for task in tasks:
        path = synth_task(task.items, variants, Path(args.output) / task.name, text_of=task.render_spoken)
        print(f"{task.name}: {len(task.items)} items × {len(variants)} variants → {path}")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    print("\n".join(list_tasks()))
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(f"zoo cache: {zoo_dir()}  (set XOPD_HOME to move it)")
        for e in ZOO.values():
            built = "built" if (zoo_dir() / e.name / "xopd_zoo.json").exists() else "-"
            print(f"  {e.name:24s} {e.kind:10s} {built:6s} {e.description}")
        return 0
    names = args.names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        print(f"unknown zoo model(s): {', '.join(unknown)}; available: {', '.join(ZOO)}", file=sys.stderr)
        return 2
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        print(f"      {ensure(name)}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    report = run_smoke(Path(args.output) if args.output else None, log=_log)
    print(format_smoke_markdown(report))
    return 0


def _cmd_speech_check(args: argparse.Namespace) -> int:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = [load_task(n, split=args.split, limit=args.limit, seed=args.seed) for n in names]
    variants = parse_variants(args.variants)
    bar = _progress_bar("speech-check", sum(len(t.items) for t in tasks) * len(variants))
    try:
        report = run_speech_check(tasks, variants, asr=None if args.no_asr else args.asr,
                                  max_seconds=args.max_seconds, min_keep_rate=args.min_keep_rate, progress=bar.update)
    finally:
        bar.close()
    report["config"] = {"tasks": names, "split": args.split, "limit": args.limit, "seed": args.seed,
                        "variants": [v.name for v in variants]}
    out = Path(args.output)
    write_json(out / "speech_check.json", report)
    print(format_speech_check_markdown(report))
    print(f"\nwall time {report['wall_time_s']} s; report {out / 'speech_check.json'}")
    return 1 if report["problems"] else 0


def _cmd_perception(args: argparse.Namespace) -> int:
    from evalsuite.backends.resolve import resolve_model  # late, as the next one: torch and transformers
    from xopd.loading import ModelLoadError

    t0 = time.perf_counter()
    if resolve_model(args.model, trust_remote_code=args.trust_remote_code).kind != "speech":
        raise ModelLoadError(f"model {args.model!r} is not a speech LLM: perception asks one model to hear, "
                             "transcribe and answer (a cascade's transcript is Whisper's, not its own)")
    tasks = _load_tasks(args)
    variants = parse_variants(args.variants)
    if len(variants) != 1:
        raise ValueError(f"--variants {args.variants!r}: perception listens to one voice per run")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    transcribe = None if args.asr == "none" else load_transcriber(args.asr)  # fails before the engine starts
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    backend = make_backend(args.backend, args.model, **_backend_kwargs(args))
    n = sum(len(t.items) for t in tasks)
    bar = _progress_bar("perception", 5 * n)  # written, speech, transcript, words, heard
    try:
        result = run_perception(backend, tasks, variants[0], params=params, transcribe=transcribe,
                                cache=GenerationCache(Path(args.cache) if args.cache else out / "cache.jsonl"),
                                chunk_size=args.chunk_size, system_prompt=args.system_prompt, progress=bar.update)
    finally:
        bar.close()
        backend.close()
    report = perception_report(result, confidence=args.confidence, n_boot=args.n_boot, seed=args.seed)
    report.update(version=REPORT_VERSION, environment=environment(), wall_time_s=round(time.perf_counter() - t0, 1),
                  config=_config(args, args.model, params, backend) | {"variant": variants[0].name,
                                                                        "asr": None if args.asr == "none" else args.asr})
    rows = [s.as_dict() | {"way": way} for way, ss in result["samples"].items() for s in ss]
    rows += [s.as_dict() | {"way": "transcript"} for s in result["transcripts"]]
    rows += [{"task": t, "id": i, "way": "asr", "response": text} for (t, i), text in result["asr"].items()]
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "report.json", report)
    print(format_perception_markdown(report))
    print(f"\nwall time {report['wall_time_s']} s; report {out / 'report.json'}, samples {out / 'samples.jsonl'}")
    return 0


def _add_run_args(p: argparse.ArgumentParser, *, output: str) -> None:
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated task names (default: {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="items per task (test split)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="TTS variants for speech mode, comma-separated")
    p.add_argument("--backend", choices=["hf", "vllm"], default=None,
                   help="generation backend (default: vllm when it imports here, else hf)")
    p.add_argument("--batch-size", type=int, default=8, help="hf backend batch size")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    p.add_argument("--data-parallel-size", type=int, default=1, help="vllm backend")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm backend")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--output", default=output, help="folder for report.json, samples.jsonl, chart")
    p.add_argument("--chunk-size", type=int, default=32, help="requests generated between cache appends")
    p.add_argument("--cache", default=None, help="generation cache JSONL (default: OUTPUT/cache.jsonl)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    p.add_argument("--system-prompt", default=None,
                   help="system message before every question (as the trainer's data.system_prompt)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xopd-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gap", help="text vs speech accuracy on the same items, with paired statistics")
    g.add_argument("--model", default=None,
                   help=f"speech LLM or cascade:<asr>+<llm> (default: {DEFAULT_MODEL}, and then --teacher "
                        f"{DEFAULT_TEACHER} and --variants {DEFAULT_GAP_VARIANTS} unless given)")
    g.add_argument("--teacher", default=None, help="text teacher: adds its text score and the paper's Avg. Drop %%")
    _add_run_args(g, output="artifacts/gap")
    g.set_defaults(variants=None)  # resolved in _cmd_gap: the demo world's two voices when --model is not given
    g.set_defaults(fn=_cmd_gap)

    f = sub.add_parser("forgetting", help="paired deltas of a trained model against its base, incl. ASR WER")
    f.add_argument("--base", required=True)
    f.add_argument("--model", required=True)
    _add_run_args(f, output="artifacts/forgetting")
    f.set_defaults(fn=_cmd_forgetting)

    pc = sub.add_parser("perception", help="the gap split into form, hearing and reasoning over speech")
    pc.add_argument("--model", required=True, help="speech LLM")
    pc.add_argument("--asr", default="whisper-tiny.en", help="ASR model whose WER is the reference ('none': skip)")
    _add_run_args(pc, output="artifacts/perception")
    pc.set_defaults(fn=_cmd_perception)

    gt = sub.add_parser("gate", help="exit 1 when a score dropped by more than --max-drop (one-sided bound)")
    gt.add_argument("--report", required=True)
    gt.add_argument("--baseline", default=None, help="earlier gap report (forgetting reports carry their own)")
    gt.add_argument("--max-drop", type=float, required=True, help="in accuracy units: 0.02 = 2 points")
    gt.add_argument("--confidence", type=float, default=0.95)
    gt.add_argument("--n-boot", type=int, default=10_000)
    gt.set_defaults(fn=_cmd_gate)

    s = sub.add_parser("synth", help="render tasks to a spoken dataset folder (datasets-loadable, Audio column)")
    s.add_argument("--tasks", required=True)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variants", default=DEFAULT_VARIANTS)
    s.add_argument("--output", required=True)
    s.set_defaults(fn=_cmd_synth)

    t = sub.add_parser("tasks", help="list the available tasks")
    t.set_defaults(fn=_cmd_tasks)

    z = sub.add_parser("zoo", help="list or build the offline model zoo")
    z.add_argument("action", choices=["list", "build"])
    z.add_argument("names", nargs="*", help="zoo models to build (default: all)")
    z.set_defaults(fn=_cmd_zoo)

    sc = sub.add_parser("speech-check", help="spoken prompts: duration bound and the ASR round trip of numbers/operators")
    sc.add_argument("--tasks", default=DEFAULT_TASKS)
    sc.add_argument("--split", default="test", choices=["test", "validation", "train"])
    sc.add_argument("--limit", type=int, default=None, help="items per task (default: the whole split)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--variants", default="hibari,hibari-slow", help="TTS variants (voices) to check")
    sc.add_argument("--asr", default="whisper-tiny.en", help="Whisper model for the round trip")
    sc.add_argument("--no-asr", action="store_true", help="durations only")
    sc.add_argument("--max-seconds", type=float, default=25.0)
    sc.add_argument("--min-keep-rate", type=float, default=0.95)
    sc.add_argument("--output", default="artifacts/speech-check")
    sc.set_defaults(fn=_cmd_speech_check)

    sm = sub.add_parser("smoke", help="run every zoo model once and report what it did")
    sm.add_argument("--output", default=None, help="folder for smoke.json")
    sm.set_defaults(fn=_cmd_smoke)

    # the subcommands of the layers above evalsuite (analysis: divergence), which evalsuite never imports:
    # each registers itself as an entry point of this group in pyproject.toml
    for ep in registered_commands():
        ep.load()(sub)
    return p


def registered_commands() -> list[EntryPoint]:
    """The ``xopd_eval.commands`` entry points, by name. Every copy of xopd's metadata is read, not only the
    first that ``entry_points()`` finds: an old ``xopd.egg-info`` in the working directory (on sys.path under
    ``python -m``) would otherwise hide the installed one."""
    found: dict[str, EntryPoint] = {}
    for dist in distributions(name="xopd"):
        for ep in dist.entry_points.select(group=COMMANDS):
            found.setdefault(ep.name, ep)
    return [found[name] for name in sorted(found)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "backend" in vars(args) and args.fn in (_cmd_gap, _cmd_forgetting, _cmd_perception):
        args.backend = resolve_backend(args.backend)
    # an unknown task, a malformed task file, a model that names nothing, a missing file: one line, exit 2
    return run_cli("xopd-eval", args.fn, args, expected=EVAL_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
