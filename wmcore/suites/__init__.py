"""The standard benchmark suites, installed with the package: ``wmcore bench`` runs them through
pytest from any directory (also ``python -m wmcore bench`` and ``pytest --pyargs wmcore.suites
--benchmark-only``), with the plugin's options (``--wm-*``), summary, artifacts and exit codes.

- ``test_drift``: every model's drift on the held-out episodes, per action source, with its gates;
- ``test_throughput``: encoder and predictor speed, open-loop rollouts, memory;
- ``test_vjepa2_ac_cache``: the V-JEPA 2-AC KV cache against recomputing (CPU; CUDA where present);
- ``test_control``: planning in the PushT simulator (the embedded models, baselines, the oracle; with
  ``--wm-think``, each ``--wm-model`` at each budget K);
- ``test_policy``: one world-model-conditioned imitation policy, trained and run closed loop;
- ``test_scaling``: 2 torchrun processes against 1, recorded, with equal reports;
- ``test_thinking``: the thinking models pusht-refine and pusht-thinker along their budget K
  (``wmcore.thinking``).

A project adds its own cases beside them (``wmcore bench bench/``) with the same fixtures
(``wm_model``, ``wm_prepared``, ``wm_record``, ...): see ``examples/my-project`` in the repository.
"""
