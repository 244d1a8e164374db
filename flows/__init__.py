"""Prefect flows of aegpo: thin orchestration over the `aegpo` library (which imports neither
Prefect nor MLflow).

    flows/train.py      aegpo-train (+ subflow aegpo-round per round)
    flows/profiling.py    aegpo-profile (cached base-entropy profile)
    flows/evaluation.py   aegpo-evaluate
    flows/tasks.py      the tasks; they take the session and exchange manifests (URIs, hashes, round numbers)
    flows/session.py    TrainingSession: the run lock and trainer train_flow opens and hands to its tasks
    flows/spec.py       RunSpec and the pre-flight checks of every input and service
    flows/tracking.py   MLflow (MlflowClient with explicit run ids)
    flows/media.py      captioned sample grids and the allocation table shown in MLflow

See docs/pipeline.md.
"""
