"""A local Triton Inference Server for the model repository (``nearline triton serve``).

:mod:`nearline.triton.server` imports pytriton and torch; import it directly where it is needed.
"""
