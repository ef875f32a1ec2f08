"""Activation analysis: calibration data, per-channel statistics, linearity criteria,
fidelity and the per-activation report (see each module)."""
