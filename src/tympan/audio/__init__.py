"""Audio input and front ends: decoding, mono mixing and resampling (:mod:`tympan.audio.io`)
and spectral front ends (:mod:`tympan.audio.frontend`)."""
