"""The same panels as a W&B Report (the `wandb-workspaces` library, in the `dev` extra): line
plots of the runs against `train/rl_step`, grouped by the run group and the config keys that
differ between the runs, and the final values as summary bar charts.

`build_report` needs no server: it only builds the report object, whose spec (`report_spec`)
is what `Report.save()` would upload. `publish` saves it and returns its URL.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any
from unittest import mock

from skyexp.report.html import CURVES
from skyexp.report.runs import RL_STEP, Run, differing_keys, pass_keys

_RANDOM_ID = re.compile(r"^[a-z0-9]{8,16}$")


def _wr():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:  # an optional dependency: offline users never need it
        raise ImportError("--wandb needs the wandb-workspaces package: pip install -e .[dev] "
                          "(or pip install wandb-workspaces)") from e
    return wr


def _filters(runs: list[Run]) -> str:
    """The sweep's runs on W&B: by their run groups when every run has one, else by run name."""
    groups = sorted({r.group for r in runs if r.group})
    if groups and all(r.group for r in runs):
        return "Group in [" + ", ".join(json.dumps(g) for g in groups) + "]"
    names = sorted({r.wandb.get("name") or r.path.name for r in runs})
    return "Name in [" + ", ".join(json.dumps(n) for n in names) + "]"


def _before_after(wr: Any, runs: list[Run], line) -> list[Any]:
    """pass@k before and after RL. W&B's run summary holds each metric's last value: the last
    evaluation (after RL) and the last step's entropy and reward; the values before RL are the
    first points of the lines over training."""
    before_after = [
        wr.BarPlot(
            title=f"{bench} pass@k after RL (last evaluation)",
            metrics=[f"val/{bench}/pass@{k}" for k in ks],
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
        for bench, ks in pass_keys(runs).items()
    ]
    before_after += [
        line(f"{bench} pass@{k} before (step 0) and after RL", f"val/{bench}/pass@{k}", f"pass@{k}")
        for bench, ks in pass_keys(runs).items()
        for k in ks[:1]
    ]
    return before_after


def build_report(runs: list[Run], entity: str, project: str, title: str = "") -> Any:
    """The report object (nothing is sent anywhere)."""
    wr = _wr()
    keys = differing_keys(runs)
    groupby = ["group"] + [f"config.{k}" for k in keys]
    runset = wr.Runset(
        entity=entity, project=project, name="sweep", filters=_filters(runs), groupby=groupby
    )

    def line(title_: str, metric: str, ylabel: str):
        return wr.LinePlot(title=title_, x=RL_STEP, y=[metric], title_x=RL_STEP, title_y=ylabel,
                           groupby_aggfunc="mean", groupby_rangefunc="stddev")

    curves = [line(f"{t} vs {RL_STEP}", m, y) for _, t, m, y in CURVES]
    passk = [line(f"{bench} pass@{k} over training", f"val/{bench}/pass@{k}", f"pass@{k}")
             for bench, ks in pass_keys(runs).items() for k in ks]
    before_after = _before_after(wr, runs, line)
    finals = [
        wr.BarPlot(
            title="Final values (mean ± sd over seeds)",
            metrics=[m for _, _, m, _ in CURVES],
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
    ]
    grid = lambda panels: wr.PanelGrid(runsets=[runset], panels=panels)  # noqa: E731
    label = ", ".join(keys) or "none"
    blocks = [
        wr.P(
            text=f"{len(runs)} runs, grouped by the run group and the config keys that differ "
            f"between them: {label}. "
            f"x axis {RL_STEP}; lines are means over seeds with ± 1 sd bands."
        ),
        wr.H2(text="Entropy, reward and the entropy coefficient"),
        grid(curves),
        wr.H2(text="pass@k over training"),
        grid(passk or [line("pass@1 over training", "val/arith/pass@1", "pass@1")]),
        wr.H2(text="pass@k before and after RL"),
        grid(before_after or [line("pass@1", "val/arith/pass@1", "pass@1")]),
        wr.H2(text="Final values"),
        grid(finals),
    ]
    groups = sorted({r.group for r in runs if r.group})
    title = title or f"skyexp sweep report: {', '.join(groups) or f'{len(runs)} runs'}"
    return wr.Report(entity=entity, project=project, title=title[:128], blocks=blocks,
                     description="python -m skyexp.report --wandb")


@contextmanager
def offline(project_id: str = "offline-project"):
    """Build report models without a server: a runset's model asks W&B for its project's internal
    id; here it gets `project_id` instead (save() still needs the real server)."""
    from wandb_workspaces.reports.v2 import interface

    with (
        mock.patch.object(interface, "_get_api", lambda: None),
        mock.patch.object(
            interface, "execute_graphql", lambda *a, **k: {"project": {"internalId": project_id}}
        ),
    ):
        yield


def report_spec(report: Any) -> dict[str, Any]:
    """The JSON the report's save() uploads (display name, project, spec), as a dict, built
    offline."""
    with offline():
        model = report._to_model()
    return {"displayName": model.display_name, "description": model.description,
            "project": {"entity": model.project.entity_name, "name": model.project.name},
            "spec": json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))}


def normalized(spec: Any) -> Any:
    """The spec with its random panel / runset ids replaced, for comparing two builds."""
    if isinstance(spec, dict):
        return {
            k: (
                "<id>"
                if k in ("id", "__id__", "ref", "panelRefs")
                or (k == "name" and isinstance(v, str) and _RANDOM_ID.match(v) and not v.isalpha())
                else normalized(v)
            )
            for k, v in spec.items()
        }
    if isinstance(spec, list):
        return [normalized(v) for v in spec]
    return spec


def round_trip(report: Any) -> Any:
    """The report rebuilt from its own uploaded model (as from_url would rebuild it)."""
    wr = _wr()
    from wandb_workspaces.reports.v2 import internal

    with offline():
        model = internal.ReportViewspec.model_validate(
            json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
        )
    return wr.Report._from_model(model)


def publish(report: Any) -> str:
    """Save the report on the W&B server (needs a login and network) and return its URL."""
    report.save()
    return report.url
