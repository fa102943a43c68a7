"""Models: the Triton-layout repository, the backends that run it, and the example build.

Import the submodules directly; this package imports nothing, so that light processes (the API)
can read configs from :mod:`nearline.models.repository` without pulling in torch.
"""
