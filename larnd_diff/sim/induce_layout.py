"""Constants of the differentiable induced current and the column layouts of its stacked inputs.

Shared by the EagerPy model (:mod:`larnd_diff.sim.induce`) and the Numba kernels that evaluate it
(:mod:`larnd_diff.sim.fused`, :mod:`larnd_diff.sim.fused_cuda`, arithmetic in :mod:`larnd_diff.sim.fused_scalars`):
the model imports the kernels, the kernels import only this module, so the dependency runs one way.
"""
from __future__ import annotations

#: The relaxed onset is evaluated on the ticks where sigmoid(s y) differs from the hard step by more than
#: e^-16 = 1e-7 of the z sample's own current (a 10 ke waveform moves by < 1e-3 e; one ADC count is ~700 e).
ONSET_TOLERANCE = 16.0

#: Per-pair inputs of the row expansion (:func:`larnd_diff.sim.induce.expand_rows`), in column order of the
#: stacked ``pairf``: sampling grid origin and steps (cm) and the pixel centre; segment start A (x, y) and unit
#: direction; Mahalanobis weights 1/sigma^2 (cm^-2), 2a, the z offset of the first sample from A (cm) and its share
#: of the metric projection; the residual direction per z step e1; sqrt(a); the charge normalisation; then the
#: row-independent fields of :data:`ROW_FIELDS` (q2, u1, u_len, h_z, z_an, vdrift); the pad's half-width (cm) of the
#: linear pad edge (:func:`pad_edge_weight`; 0 = larnd-sim's hard in-pad selection).
PAIR_FIELDS = ("x0", "step_x", "y0", "step_y", "x_p", "y_p", "ax", "ay", "ux", "uy", "uz", "w_t", "w_l", "two_a",
               "rz0", "rz0_uz_wl", "e1x", "e1y", "e1z", "sqrt_a", "norm", "q2", "u1", "u_len", "h_z", "z_an",
               "vdrift", "edge")
(P_X0, P_SX, P_Y0, P_SY, P_XP, P_YP, P_AX, P_AY, P_UX, P_UY, P_UZ, P_WT, P_WL, P_TWO_A, P_RZ0, P_RZ0_UZ_WL,
 P_E1X, P_E1Y, P_E1Z, P_SQRT_A, P_NORM, P_Q2, P_U1, P_ULEN, P_HZ, P_ZAN, P_VD, P_EDGE) = range(len(PAIR_FIELDS))

#: Per-row inputs (one in-pad sample row of a pair), in column order of the kernels' ``rowf``:
#: Gaussian exponent coefficients q0 + q1 k + q2 k^2 of z sample k; erf arguments u0 + u1 k and u_len;
#: coef = charge normalisation (electrons per tick per unit current, 0 on padded rows); h_z (cm) the z step;
#: z_an (cm) the anode relative to the first z sample; vdrift (cm/us); delay (us) of the current template;
#: tau_fast, tau_slow (us) its time constants and amp the fast fraction.
ROW_FIELDS = ("q0", "q1", "q2", "u0", "u1", "u_len", "coef", "h_z", "z_an", "vdrift", "delay", "tau_fast",
              "tau_slow", "amp")
Q0, Q1, Q2, U0, U1, ULEN, COEF, HZ, ZAN, VD, DELAY, TF, TS, AMP = range(len(ROW_FIELDS))

#: Host integers per pair of the whole-event kernels (``fused.charge_forward``), columns of ``table``: first in-pad
#: sample (ix0, iy0) and the nx x ny samples from there (the pair's rows), z samples, window ticks, output row and
#: its tick of window tick 0.
PAIR_TABLE = ("ix0", "iy0", "nx", "ny", "n_z", "n_win", "out_row", "placement")
T_IX0, T_IY0, T_NX, T_NY, T_NZ, T_NWIN, T_ROW, T_PLACE = range(len(PAIR_TABLE))
