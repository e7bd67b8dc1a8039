"""After the epochs: temperature calibration, the reported metrics, and the model folder's files."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emovox import __version__
from emovox.atomic import write_json
from emovox.defaults import WEIGHTS_FILE
from emovox.modelio import save_model
from emovox.models import count_parameters
from emovox.training.checkpoints import TrainState
from emovox.training.config import TrainConfig
from emovox.training.evaluation import (
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    plot_training_curves,
    softmax,
    write_report,
)
from emovox.training.full_model import write_full_model
from emovox.training.loop import Run, TrainData
from emovox.training.plan import SplitPlan


def calibrate_and_report(run: Run, data: TrainData, plan: SplitPlan, labels: list[str], state: TrainState,
                         training_time_s: float) -> dict[str, Any]:
    """Load the best weights, fit the temperature on validation, and measure the test split (or
    validation when there is none); the model ends on the CPU, in eval mode, its config calibrated."""
    run.model.load_state_dict(state.best_state)
    run.model.cpu().eval()  # calibration, reports and saved artifacts on the CPU
    sets, y = data.sets, data.y
    val_logits = run.predict(sets["val"].features)
    temperature = fit_temperature(val_logits, y["val"])
    part = "test" if sets["test"] is not None and sets["test"].features else "val"
    logits = val_logits if part == "val" else run.predict(sets["test"].features)
    metrics = compute_metrics(y[part], logits.argmax(1), labels)
    metrics.update({
        "split": part,
        "split_kind": plan.kind,
        "split_message": plan.message,
        "sizes": {p: (len(fs.features) if fs else 0) for p, fs in sets.items()},
        "ece": expected_calibration_error(softmax(logits), y[part]),
        "ece_calibrated": expected_calibration_error(softmax(logits, temperature), y[part]),
        "temperature": temperature,
        "best_epoch": state.best_epoch,
        "best_val_uar": state.best_uar,
        "epochs_run": len(state.history),
        "training_time_s": training_time_s,
    })
    run.model_config["temperature"] = temperature
    return metrics


def write_artifacts(out: Path, run: Run, data: TrainData, cfg: TrainConfig, plan: SplitPlan, metrics: dict[str, Any],
                    history: list[dict[str, Any]], *, meta: dict[str, Any] | None, save_full_model: bool, plots: bool,
                    started_at: float, say) -> dict[str, Any]:
    """The model folder: weights and config, report, history, curves, full models; returns model_meta.json."""
    model, model_config, feat_cfg = run.model, run.model_config, cfg.feature_config()
    labels, temperature = model_config["labels"], model_config["temperature"]
    save_model(out, model, model_config)
    write_report(out, metrics, title=f"{cfg.model} ({metrics['split']}, {plan.kind})", plots=plots)
    write_json(out / "training_history.json", history)
    if plots:
        plot_training_curves(history, out / "training_curves.png")
    full_files = write_full_model(out, model, data.stats, feat_cfg, temperature, labels, say) if save_full_model else {}
    model_meta = {
        "model": cfg.model,
        "labels": labels,
        "features": feat_cfg.to_dict(),
        **(meta or {}),
        "split": plan.to_dict(),
        "seed": cfg.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emovox_version": __version__,
        "parameters": count_parameters(model),
        # what training changed: the head alone on a frozen backbone (the hybrid recipe's 49,983)
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "size_bytes": (out / WEIGHTS_FILE).stat().st_size,
        "training_time_s": round(metrics["training_time_s"], 2),
        "wall_time_s": round(time.perf_counter() - started_at, 2),
        "epochs_run": len(history),
        "best_epoch": metrics["best_epoch"],
        "temperature": temperature,
        "train_config": cfg.to_dict(),
        **({"augment": data.multi.describe()} if data.multi is not None else {}),
        **full_files,
    }
    write_json(out / "model_meta.json", model_meta)
    return model_meta
