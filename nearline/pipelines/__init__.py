"""Pipelines: :mod:`~nearline.pipelines.spec` loads ``pipelines.yaml`` (light: no torch, used
by the API for input schemas); :mod:`~nearline.pipelines.runner` runs a pipeline's steps on a
batch (workers only).
"""
