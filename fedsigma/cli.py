"""The ``fedsigma`` command: run scenarios on the inline, simulation or deployment engine."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsigma import __version__
from fedsigma.engines.deployment import Certificates, check_reachable
from fedsigma.engines.dispatch import DeployOptions, check_size, run_engine, size_report
from fedsigma.engines.processes import EngineError
from fedsigma.experiments.compare import compare
from fedsigma.experiments.reproduce import reproduce
from fedsigma.outdir import check_out, results_folder
from fedsigma.progress import RoundsProgress
from scenarios.loader import ScenarioError, apply_override, bundled_names, load_scenario, validate
from scenarios.schema import Scenario
from server import checkpoint
from server.methods import METHODS, get_method, strategy_for

ENGINES = ("inline", "simulation", "deployment")
# Exit codes (README "Exit codes and limits"): 0 the run finished (target reached or round
# budget spent); 1 it started but failed: diverged, every client failed, an engine error;
# 2 bad input, refused before any folder or process exists; 130 interrupted; 143 SIGTERM.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
FINISHED = ("target", "max_rounds", "diverged")  # summary.json statuses of a run that ended by itself
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises KeyboardInterrupt, so the
    same clean-up runs: the round in flight is dropped, the summary and arrays of the
    finished rounds are written and every process the run started is stopped."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the summary short
    raise Terminated("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    # emoji=False: ":x:" in a path or a value stays ":x:"; every message is escaped for markup
    console = Console(stderr=False, emoji=False)
    err = Console(stderr=True, emoji=False)
    # signal handlers can only be set from the main thread (a caller may run main() elsewhere)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return args.func(args, console)
    except ScenarioError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    except Terminated:
        where = getattr(args, "results", None)
        err.print("[yellow]terminated[/] (SIGTERM): the summary and the rounds finished so far are kept"
                  + (f" in {where}; continue with `fedsigma run --resume {where}`" if where else ""),
                  highlight=False, soft_wrap=True)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: rounds finished so far are kept in the results folder")
        return EXIT_INTERRUPTED
    except (EngineError, RunFailed) as exc:  # the run started but did not complete: say why
        print_error(err, str(exc))
        return EXIT_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class RunFailed(RuntimeError):
    """The run started and ended badly (diverged, every client failed); str() is one line."""


def print_error(err: Console, message: str) -> None:
    """``error: message`` on stderr, the message's first line verbatim (no markup, no emoji)."""
    first, *rest = message.splitlines() or [""]
    err.print(f"[bold red]error:[/] {escape(first)}", highlight=False, soft_wrap=True)
    for line in rest:  # an engine's log tail: context after the one error line
        err.print(escape(line), highlight=False, soft_wrap=True, style="dim")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (exit 2) like every other bad input."""

    def error(self, message: str):  # noqa: D102
        sys.stderr.write(f"error: {self.prog}: {message}; see {self.prog} --help\n")
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fedsigma",
        description="Federated linear regression preconditioned by Σ recovered from calibrated gradients.",
    )
    parser.add_argument("--version", action="version", version=f"fedsigma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write its results folder")
    run.add_argument("scenario", nargs="?",
                     help="a scenario .toml file or a bundled name: " + ", ".join(bundled_names()))
    run.add_argument("--engine", choices=ENGINES, help="override the scenario's engine (default: inline)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, e.g. --set protocol.batch_size=128 (repeatable)")
    run.add_argument("--out", type=Path, help="results folder (default: runs/<scenario>-<timestamp>/)")
    run.add_argument("--method", choices=list(METHODS), metavar="METHOD",
                     help="the server's method (default gradcov): " + "; ".join(
                         f"{m.name}: {m.description}" for m in METHODS.values()))
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue the interrupted run in DIR from its last checkpoint (same code, scenario "
                          "and method; numbers as if never interrupted)")
    dep = run.add_argument_group("deployment engine")
    dep.add_argument("--superlink", metavar="HOST:PORT",
                     help="use this running SuperLink instead of starting one on 127.0.0.1")
    dep.add_argument("--no-supernodes", action="store_true",
                     help="start no SuperNodes: the SuperLink's own are connected (e.g. docker compose)")
    dep.add_argument("--tls", action="store_true",
                     help="HTTPS and SuperNode authentication, with fresh certificates unless --certs")
    dep.add_argument("--certs", type=Path, metavar="DIR",
                     help="TLS with the CA, server certificate and SuperNode keys of scripts/make-certs.sh DIR")
    run.add_argument("--verbose", action="store_true",
                     help="also print Flower's log lines (always in the results folder's flower.log)")
    sim = run.add_argument_group("simulation engine")
    sim.add_argument("--ray-address", metavar="HOST:PORT",
                     help="run the clients on this running Ray cluster (its head's `ray start --head` "
                          "address) instead of a private one on this machine")
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("show", help="print a scenario with every default filled in, as JSON")
    show.add_argument("scenario")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_show)
    cmp_ = sub.add_parser("compare", help="run one scenario with every method; tune learning rates; compare")
    cmp_.add_argument("scenario")
    cmp_.add_argument("--methods", default=",".join(METHODS),
                      help="comma-separated, from: " + ", ".join(METHODS))
    cmp_.add_argument("--engine", choices=ENGINES)
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp_.add_argument("--max-rounds", type=int, help="round budget of every method (default: stop.max_rounds)")
    cmp_.add_argument("--seeds", default="", metavar="S1,S2,…",
                      help="also rerun each method at its tuned value on these seeds (new data, partitions, "
                           "noise, sampling) and report the spread of rounds to target")
    cmp_.add_argument("--out", type=Path, help="default: runs/compare-<scenario>-<timestamp>/")
    cmp_.set_defaults(func=cmd_compare)
    rep = sub.add_parser("reproduce", help="test the paper's claims: figures, report.md and a verdict per claim")
    rep.add_argument("--quick", action="store_true", help="small settings that finish within 2 minutes (CI)")
    rep.add_argument("--out", type=Path, help="report folder (default: runs/reproduce-<timestamp>/); must be new or empty")
    rep.set_defaults(func=cmd_reproduce)
    est = sub.add_parser("estimate", help="the memory and time a scenario needs, term by term, and this machine's limit")
    est.add_argument("scenario")
    est.add_argument("--engine", choices=ENGINES)
    est.add_argument("--method", default="gradcov", choices=list(METHODS), metavar="METHOD")
    est.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    est.set_defaults(func=cmd_estimate)
    lst = sub.add_parser("list", help="list the bundled scenarios")
    lst.set_defaults(func=cmd_list)
    return parser


def cmd_list(args, console: Console) -> int:
    for name in bundled_names():
        sc = load_scenario(name)
        console.print(f"[bold]{name}[/]: {sc.description}", highlight=False)
    return 0


def cmd_compare(args, console: Console) -> int:
    overrides = list(args.overrides) + ([f'engine="{args.engine}"'] if args.engine else [])
    name = Path(args.scenario).stem
    out = check_out(args.out or Path("runs") / f"compare-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.max_rounds is not None and args.max_rounds < 1:
        raise ScenarioError("--max-rounds: must be ≥ 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ScenarioError(f"--methods: no method in {args.methods!r}; e.g. --methods gradcov,fedavg")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise ScenarioError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers; "
                            "e.g. --seeds 1,2,3") from None
    if any(not 0 <= sd < 2**63 for sd in seeds):
        raise ScenarioError("--seeds: every seed must be in [0, 2^63)")
    compare(args.scenario, methods, overrides, out, console, max_rounds=args.max_rounds, seeds=seeds)
    console.print(f"comparison.csv, comparison.png and every run's folder → {escape(str(out))}", highlight=False)
    return 0


def cmd_reproduce(args, console: Console) -> int:
    out = args.out or Path("runs") / f"reproduce-{time.strftime('%Y%m%d-%H%M%S')}"
    with results_folder(out) as out:
        return reproduce(quick=args.quick, out=out, console=console)


def cmd_estimate(args, console: Console) -> int:
    scenario = with_method(load_scenario(args.scenario, run_overrides(args)), args.method, args.overrides)
    console.print(escape(size_report(scenario, args.method)), highlight=False, soft_wrap=True)
    check_size(scenario, args.method)
    return 0


def cmd_show(args, console: Console) -> int:
    sc = load_scenario(args.scenario, args.overrides)
    console.print_json(sc.model_dump_json())
    return 0


def cmd_run(args, console: Console) -> int:
    if args.resume is not None:
        scenario, method, out, done = resume_target(args)
    else:
        if args.scenario is None:
            raise ScenarioError("scenario: name one (`fedsigma list` shows the bundled ones) or give --resume DIR")
        method = args.method or "gradcov"
        scenario = with_method(load_scenario(args.scenario, run_overrides(args)), method, args.overrides)
        out, done = args.out or Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}", 0
    deploy = deployment_options(args, scenario)
    preflight(scenario, deploy, method)
    check_size(scenario, method)  # before any folder, process or Ray cluster
    # a new run's folder is created now and removed if no round ran; a resumed run reuses its own
    folder = contextlib.nullcontext(out) if args.resume is not None else results_folder(
        out, hint="or continue an interrupted run there with --resume")
    with folder as out:
        args.results = out
        deploy.share_out_dir(out)
        console.print(
            f"[bold]{escape(scenario.name)}[/] on the [bold]{scenario.engine}[/] engine: "
            f"{scenario.clients.count} clients, d = {scenario.dim()}, up to {scenario.stop.max_rounds} rounds"
            + (f", resumed after round {done}" if args.resume is not None else "") + f" → {escape(str(out))}",
            highlight=False,
        )
        with RoundsProgress(out / "rounds.csv", scenario.stop.max_rounds, console):
            run_engine(scenario, out, method=method, deploy=deploy, resume=args.resume is not None)
        if not (out / "summary.json").is_file():  # a remote SuperLink: its ServerApp wrote the folder
            console.print(f"run finished; the ServerApp wrote its results folder {escape(deploy.out_dir(out))} "
                          "relative to its own working directory", highlight=False)
            return EXIT_OK
        summary = json.loads((out / "summary.json").read_text())
        print_summary(summary, out, console)
        check_status(summary)
    return EXIT_OK


def check_status(summary: dict) -> None:
    """Raise RunFailed (exit 1) with the status line if the run diverged or failed."""
    status = str(summary.get("status", ""))
    if status == "diverged":
        risk = summary.get("final", {}).get("excess_risk")
        shown = f" (excess risk {risk:.3g})" if isinstance(risk, (int, float)) else ""
        raise RunFailed(f"status diverged: round {summary.get('rounds_run')}{shown}; "
                        "lower training.learning_rate or training.local_learning_rate")
    if status.startswith(("error", "clients failed")):
        raise RunFailed(f"status {status}")


def run_overrides(args) -> list[str]:
    """The scenario overrides of ``run``: --set, then --engine."""
    return [*args.overrides, *([f'engine="{args.engine}"'] if args.engine else [])]


def with_method(scenario, method: str, overrides: list[str]):
    """The scenario with the method's own settings (fedsgd: preconditioner off); a ``--set``
    that contradicts one of them is an error, not silently replaced."""
    entry = get_method(method)
    given = {item.partition("=")[0].strip() for item in overrides}
    for key in entry.differences(scenario):
        if key in given:
            raise ScenarioError(f"--set {key}: --method {method} sets it to {entry.settings[key]!r}; drop the "
                                "--set or choose another method")
    return entry.prepare(scenario)


def resume_target(args) -> tuple[Scenario, str, Path, int]:
    """(scenario, method, folder, rounds done) of ``run --resume DIR``, checked: a
    checkpoint there, a run that has not finished, the code, scenario and method
    that wrote it (a scenario or --set given as well must agree; --engine may differ)."""
    out = args.resume.resolve()
    if args.out is not None and args.out.resolve() != out:
        raise ScenarioError(f"--out: a resumed run continues in its own folder {out}; leave --out out")
    try:
        meta = checkpoint.read_meta(out)
    except checkpoint.CheckpointError as exc:
        raise ScenarioError(f"--resume: {exc}") from None
    summary = out / "summary.json"
    status = json.loads(summary.read_text()).get("status", "") if summary.is_file() else ""
    if status in FINISHED:
        raise ScenarioError(f"--resume: the run in {out} has finished ({status}); start a new one with --out")
    method = args.method or meta["method"]
    if method == "fednl":  # its Hessian estimates live in the clients' context.state, gone with them
        raise ScenarioError("--resume: fednl's clients keep their learned Hessians in memory, which an "
                            "interrupted run lost; start a new run with --out")
    if args.scenario is not None:
        scenario = load_scenario(args.scenario, run_overrides(args))
    else:  # the checkpoint's scenario (the method's settings applied), with any --set on top
        raw = json.loads(meta["scenario"])
        for item in run_overrides(args):
            apply_override(raw, item)
        scenario = validate(raw, f"the checkpoint in {out}")
    scenario = with_method(scenario, method, args.overrides)
    try:
        checkpoint.check(meta, scenario.model_dump_json(), method)
    except checkpoint.CheckpointError as exc:
        raise ScenarioError(f"--resume: {exc}") from None
    return scenario, method, out, int(meta["round"])


def deployment_options(args, scenario) -> DeployOptions:
    """Check the deployment flags against the scenario's engine; one-line errors."""
    opts = DeployOptions(args.superlink, args.no_supernodes, args.tls or args.certs is not None,
                         args.certs.resolve() if args.certs else None, args.ray_address, args.verbose)
    if opts.ray_address is not None:
        if scenario.engine != "simulation":
            raise ScenarioError("--ray-address: only with the simulation engine; add --engine simulation")
        host, _, port = opts.ray_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ScenarioError(f"--ray-address: expected HOST:PORT (e.g. 10.0.0.5:6379), got {opts.ray_address!r}")
    if scenario.engine != "deployment":
        for flag, given in (("--superlink", opts.superlink), ("--no-supernodes", opts.no_supernodes),
                            ("--tls", args.tls), ("--certs", opts.certs)):
            if given:
                raise ScenarioError(f"{flag}: only with the deployment engine; add --engine deployment")
    if opts.superlink is not None:
        host, _, port = opts.superlink.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ScenarioError(f"--superlink: expected HOST:PORT (e.g. 127.0.0.1:8000), got {opts.superlink!r}")
    if args.tls and opts.superlink is not None and opts.certs is None:
        raise ScenarioError("--tls: a running SuperLink has its own CA; give --certs DIR with its ca.crt instead")
    if opts.no_supernodes and opts.superlink is None:
        raise ScenarioError("--no-supernodes: needs --superlink HOST:PORT, the SuperLink your SuperNodes joined")
    if opts.certs is not None and not opts.certs.is_dir():
        raise ScenarioError(f"--certs: no folder {str(opts.certs)!r}; make one with scripts/make-certs.sh DIR N")
    if scenario.engine == "deployment":
        if opts.certs is not None:
            nodes = 0 if opts.no_supernodes else scenario.clients.count
            Certificates(opts.certs).check(nodes, superlink=opts.superlink is None)
        if opts.superlink is not None:
            check_reachable(opts.superlink, ca=Certificates(opts.certs).ca if opts.certs else None)
    return opts


def preflight(scenario, deploy: DeployOptions, method: str) -> None:
    """Fail before any process starts on what only shows once the run has begun: the
    scenario with this method's settings must build its strategy."""
    if scenario.has_oracle():  # the ServerApp has the true Σ: every method builds
        return
    if not scenario.data.paths and not deploy.no_supernodes:
        raise ScenarioError(
            f"data.paths: data.kind = 'nodes' on the {scenario.engine} engine needs one CSV per client in "
            "data.paths (SuperNodes started by you name theirs with --node-config data-path=...)"
        )
    # no true Σ: 'auto' without the preconditioner, and the oracle method, cannot start
    strategy_for(scenario, method, oracle=None)


def print_summary(summary: dict, out: Path, console: Console) -> None:
    """A short table: rounds to target, final metrics, bytes and time."""
    final = summary.get("final", {})
    table = Table(show_header=False, box=None)
    reached = summary["rounds_to_target"]
    table.add_row("status", escape(str(summary["status"])))
    if summary["scenario"]["data"]["kind"] == "nodes":  # no oracle: no excess risk to reach a target with
        table.add_row("rounds run", f"{summary['rounds_run']} (no excess risk: nodes hold their own data)")
    else:
        table.add_row(
            f"rounds to {summary['target']:g}",
            str(reached) if reached else f"not reached in {summary['rounds_run']} rounds",
        )
    for key, label in (("excess_risk", "final excess risk"), ("sigma_rel_error", "‖Σ̂ − Σ‖/‖Σ‖"),
                       ("sigma_whitened_error", "whitened Σ̂ error")):
        if final.get(key) is not None:
            table.add_row(label, f"{final[key]:.3e}")
    table.add_row("bytes up / down", f"{final.get('bytes_up', 0):,} / {final.get('bytes_down', 0):,}")
    table.add_row("learning rate", f"{summary['learning_rate']:.4g}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("results", escape(str(out)))
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
