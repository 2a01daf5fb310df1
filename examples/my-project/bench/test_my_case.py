"""This project's own bench case, beside wmcore's installed suites: it uses the plugin's fixtures, so
it runs once per --wm-model and reads the same --wm-data. It checks that the encoder does not
collapse (frames of an episode must not all map to one latent), times the encoder, and records a
figure in the benchmark's extra_info (runs/benchmarks/... JSON, as the suites' cases do)."""

from __future__ import annotations


def test_encoder_does_not_collapse(benchmark, wm_model, wm_episodes, wm_prepared):
    cfg, prep = wm_prepared("recorded")  # the encoded ground truth, shared with the drift suite
    frames = wm_episodes[0].frames[None, : cfg.horizon]  # [1, T, H, W, 3]
    latents = benchmark(wm_model.encode, frames)
    spread = latents.float().std(dim=1).mean().item()  # over time, averaged over tokens and channels
    benchmark.extra_info["latent_spread"] = spread
    benchmark.extra_info["frames_per_s"] = frames.shape[1] / benchmark.stats.stats.median
    assert prep.latents.shape[0] == len(prep.ids)
    assert spread > 1e-4, f"{wm_model.name}: every frame of episode {prep.ids[0]} encodes to the same latent"
