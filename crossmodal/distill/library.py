"""Import every built-in distiller so that it registers itself, in the order of the paper's comparison."""
from crossmodal.distill import kd, fitnet, at, sp, cc, vid, rkd, pkt, nst, crd, crd_kd  # noqa: F401
