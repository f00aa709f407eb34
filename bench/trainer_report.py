"""The comparison ``bench/trainer.py`` prints: a table of the sides, and the ratios its targets are stated in
(docs/benchmarks.md): ours against TRL and the padded floor, and LoRA against full DPO and TRL + peft."""

from __future__ import annotations

from typing import Any


def table(results: dict[str, dict]) -> str:
    cols = ["examples_per_s", "tokens_per_s", "step_s", "step_cpu_s", "examples_per_cpu_s", "tokens_per_cpu_s"]
    cols += ["peak_rss_mib", "train_peak_rss_mib"]
    cols += ["peak_gpu_mib", "mfu"]
    present = [c for c in cols if any(c in r for r in results.values())]
    if any("error" in r for r in results.values()):
        present.append("error")
    lines = ["| side | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for side, r in results.items():
        cells = [str(r.get(c, "")) for c in present]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: dict[str, dict], lengths: str) -> dict[str, Any]:
    """Headline ratios. ``ratio_vs_trl`` > 1: ours is faster than TRL; ``ratio_vs_floor``: our time / the floor's
    (1.0 = no overhead, < 1 = faster than the floor).

    On CPU from process CPU time (a shared machine's wall clock mostly measures the neighbours; with --threads 1
    CPU time is what the step costs on a free core), on GPU from wall time. Fixed lengths: median step time, ours =
    ``ours``. Skewed lengths: throughput over all timed steps in real tokens per second, ours = ``ours_packed``, TRL =
    its best side (``trl_grouped`` trains other batches, so only tokens/s compares it; on the same batches tokens/s
    and examples/s ratios are the same number).
    """
    on_cpu = any(r.get("device") == "cpu" for r in results.values())
    floor = results.get("floor", {})
    out: dict[str, Any] = {}

    def ratio(a: dict, b: dict, key: str) -> float | None:
        return round(a[key] / b[key], 3) if key in a and key in b and b[key] else None

    if lengths == "fixed":
        ours, trl = results.get("ours", {}), results.get("trl", {})
        key = "step_cpu_s" if on_cpu else "step_s"
        out["ratio_basis"] = f"median {'process CPU' if on_cpu else 'wall'} time per step"
        out["ratio_vs_trl"], out["ratio_vs_floor"] = ratio(trl, ours, key), ratio(ours, floor, key)
        out["ratio_vs_trl_wall"], out["ratio_vs_floor_wall"] = ratio(trl, ours, "step_s"), ratio(ours, floor, "step_s")
        return out
    key = "tokens_per_cpu_s" if on_cpu else "tokens_per_s"
    ours = results.get("ours_packed", {})
    trls = [results[k] for k in ("trl", "trl_grouped") if key in results.get(k, {})]
    trl = max(trls, key=lambda r: r[key]) if trls else {}
    out["ratio_basis"] = f"real tokens per {'process CPU' if on_cpu else 'wall'} second over all timed steps"
    out["ours_side"], out["trl_side"] = "ours_packed", trl.get("side")
    out["ratio_vs_trl"] = ratio(ours, trl, key)
    out["ratio_vs_floor"] = ratio(floor, ours, key)
    out["ratio_vs_trl_wall"] = ratio(ours, trl, "tokens_per_s")
    out["ratio_vs_floor_wall"] = ratio(floor, ours, "tokens_per_s")
    out["ratio_vs_trl_same_batches_examples"] = ratio(ours, results.get("trl", {}), key.replace("tokens", "examples"))
    out["packed_speedup_vs_padded"] = ratio(ours, results.get("ours", {}), key)
    out["padded_ratio_vs_floor"] = ratio(floor, results.get("ours", {}), key)
    return out


def lora_ratios(results: dict[str, dict]) -> dict[str, Any]:
    """``--lora`` headline ratios: LoRA-DPO against full DPO on the same model and data (``ours_lora`` / ``ours``:
    peak memory and step time, < 1 = LoRA costs less), and ours against TRL ``DPOTrainer`` + ``peft`` with the same
    LoRA configuration (``ratio_vs_trl_peft`` = TRL's step time / ours, > 1 = ours faster;
    ``memory_vs_trl_peft`` = our peak / TRL's, < 1 = ours smaller).

    Time: median step time, process CPU on CPU, wall on GPU. Memory: peak GPU memory on a GPU; on CPU the peak RSS
    above the side's own baseline (the RSS after its imports, before the model is built: the memory training
    takes, without the interpreter and libraries every side loads, TRL more of them); ``*_rss`` repeat the memory
    ratios from the whole-process peak RSS."""
    on_cpu = any(r.get("device") == "cpu" for r in results.values())
    time_key = "step_cpu_s" if on_cpu else "step_s"
    memory_key = "train_peak_rss_mib" if on_cpu else "peak_gpu_mib"
    lora, full, trl = (results.get(k, {}) for k in ("ours_lora", "ours", "trl_peft"))

    def ratio(a: dict, b: dict, key: str) -> float | None:
        return round(a[key] / b[key], 3) if key in a and key in b and b[key] else None

    return {
        "lora_vs_full_memory": ratio(lora, full, memory_key),
        "lora_vs_full_time": ratio(lora, full, time_key),
        "ratio_vs_trl_peft": ratio(trl, lora, time_key),
        "memory_vs_trl_peft": ratio(lora, trl, memory_key),
        "lora_vs_full_memory_rss": ratio(lora, full, "peak_rss_mib"),
        "memory_vs_trl_peft_rss": ratio(lora, trl, "peak_rss_mib"),
        "ratio_vs_trl_peft_wall": ratio(trl, lora, "step_s"),
        "lora_ratio_basis": f"median {'process CPU' if on_cpu else 'wall'} step time; "
        + ("peak RSS above the side's baseline" if on_cpu else "peak GPU memory"),
    }
