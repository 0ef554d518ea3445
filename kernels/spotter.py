"""The online micro-expression spotter: aligned face crops in, (onset, apex, offset)
intervals out, one stream at a time, in bounded memory and time.

Method (our choice, after the MEGC spotting baselines: ROI optical flow against a frame a
fixed time back, Li et al. 2019, He et al. 2020, and main-directional motion, Liu et al.
2016):

1. Signal. Each new crop is compared with the crop `lag_s` seconds before it (the
   reference): the head's rigid motion between them is fitted and undone
   (`signals.rigid_motion` on the nose bridge, temples and forehead), the dense flow of
   what is left is computed (`flow.dense_flow`), and each facial region's main-direction
   motion is measured (`signals.roi_stats`). The signal is the largest of the
   expression regions (brows, nose, mouth corners, chin), in px of a 128 px crop. With
   `lag_s` longer than a micro-expression's rise (onset to apex: 40-250 ms in SynthME,
   as in CASME II), the reference frame of every frame up to the apex is a neutral frame
   before the onset, so the signal is the expression's own displacement: it rises at the
   onset and peaks at the apex; after it, it falls as the face returns and as the
   reference frame moves into the rise. A choice: 0.4 s, not the whole length of a
   micro-expression (0.5 s, as before). Measured on the tuning seed (64
   micro-expressions per cell; F1 with `lag_s` 0.5, 0.4, 0.35, 0.3): photographic H.264
   CRF 23 at 200 fps 0.622, 0.655, 0.655, 0.672 (false spots 18, 12, 12, 15); at 30 fps
   0.693, 0.741, 0.782, 0.703; parametric FFV1 0.741, 0.774, 0.774, 0.779 (false spots
   4, 1, 1, 5). Less time between the two frames leaves less head drift and codec
   texture change between them, and the faster fall confirms the apex sooner (p50 from
   apex to emission 80-100 ms at 200 fps). 0.4 s keeps a margin over the longest rises;
   an expression rising for longer than `lag_s` (some of SAMM's) peaks before its apex.
   On the held-out seed (docs/spotting.md) the parametric cells rose with it, but both
   photographic H.264 CRF 23 cells fell (F1 0.681 to 0.651 at 200 fps, 0.707 to 0.687
   at 30 fps; inside their intervals), with more false spots: the tuning cells are too
   small to settle it.
   a. Denoising (for camera video): the crops are first averaged over the last
      `denoise_s` of media time (20 ms: four frames at 200 fps, two at 60, one at 30).
      Sensor noise is new in every frame and a codec re-quantises texture differently in
      every frame; a micro-expression takes 40 ms or more to its apex and barely blurs.
      The reference is the mean of those over `reference_s` more (50 ms: it is at rest
      before the onset, so nothing of an expression is lost), which leaves less of the
      reference's own noise in the comparison. Measured on the tuning seed (64
      micro-expressions per cell; F1 without it, with 50 ms, with 100 ms): photographic
      H.264 CRF 23 at 200 fps 0.571, 0.622, 0.581; at 30 fps 0.673, 0.693, 0.717;
      parametric FFV1 0.778, 0.741, 0.745. 50 ms was kept for the camera-like cells. Its
      cost: on a quiet photographic face in H.264 CRF 28 at 100 fps with head drift
      (`test_spotting`), 7 false spots in 12 s against 4 without it.
   b. Each region against its own floor: every region keeps its own resting mean and
      deviation, one pair for comparisons within one GOP and one for comparisons across a
      key frame (the decoder's key-frame flag; a stream that is all key frames, or has no
      flags, has one state). The signal is each region's motion above its floor, scaled
      down to a typical region's noise when it is noisier (textured skin, the glasses'
      rims, a collar: where codecs shimmer), never up (a flat region's codec blocks would
      be amplified), plus the typical floor. Measured on the tuning seed: the false spots
      on a photographic face in H.264 that had no expression came from one noisy region
      (the chin), and a key frame raised the floor of comparisons across it by 20%.
      Each frame at rest moves its state's floors by one frame's weight (its time since
      the frame before, over `noise_window_s`). Before, the weight was the time since the
      state's own last update: the first comparison after a stretch in the other state
      (0.4-0.6 s of a 1 s GOP) or after an interval counted as 0.2-0.3 of the floor, and
      at a key frame that comparison is the noisiest.
   c. Smoothing: each region's motion is averaged over the last `smooth_s` of media time
      (25 ms: five frames at 200 fps, one at 30), so the apex is where the motion peaks,
      not where one frame's noise topped it, and the fall after it is the expression's.
      The averages of 1a and 1c make the signal late by half their spans; an interval is
      moved back by that much when it is emitted.
   d. Blinks: while the eyes (outside the signal) move more than `blink_ratio` times a
      region next to them (brows, nose), or more than `blink_far_ratio` times a region
      far from them (mouth corners, chin), that region is left out of the signal. A blink
      reaches the regions next to the eyes through the lids' skin and the glasses' rims,
      and the far ones through the dense flow itself: in textureless skin the flow is
      what the coarse pyramid levels said, and there the eyes' 2 px reach the mouth as
      0.2-0.3 px. A micro-expression of the mouth or chin larger than that is still seen
      during a blink. Measured on the tuning seed (64 micro-expressions per cell): a blink
      overlapped 10 to 12 of them; rejecting every candidate during a blink (as before)
      found 1 to 3 of those, leaving out only the regions next to the eyes found 7 to 10
      but let a blink fire on smooth skin (`test_kernels`), and with the far ratio 3 or 4.
      That was the rule for small eye motion only. In a blink (the eyes moving more than
      `still_eyes_px`, the `blink_px` of step 2a) the regions are measured again with the
      eyes held still: the reference's eyes blended into the frame (over 3 px around the
      eye boxes), and no region is left out. Two things had carried a blink into the
      regions. The coarse levels of the dense flow, which spread the eyes' motion over the
      brows and nose (0.2-0.3 px; 0.05 with the eyes held still). And the head's
      brightness gain: the rigid fit scales the frame to the reference's mean grey level,
      a lid over the eye changes that mean, and the fit read the changed gain as a slight
      turn and shift of the head, which showed as 0.15-0.2 px at the mouth and chin, far
      from the crop's centre; the gain is now measured without the eyes
      (`signals.rigid_motion`'s `weight`). Measured on the tuning seed: of the 27
      micro-expressions the spotter missed in photographic H.264 CRF 23 at 200 fps, 9
      had been refused as blinks (a blink during the expression). F1 (parametric FFV1 at
      200 fps; photographic H.264 CRF 23 at 200 and at 30 fps): before 0.774, 0.655,
      0.741 (false spots 1, 12, 4); eyes held still from 0.2 px, gain as before 0.768,
      0.695, 0.804 (5, 13, 3; the 4 new false spots on parametric faces were blinks seen
      at the chin and mouth, through the gain); with the gain without the eyes 0.839,
      0.695, 0.743 (1, 13, 7); the same from 0.35 px (kept) 0.829, 0.717, 0.748 (1, 13,
      8). From 0.2 px a micro-expression whose own motion reached the eyes was found with
      its apex 110 ms late (`test_kernels`): the measurement switched in the middle of
      it. The cost: one more flow per frame during a blink (about one frame in ten).
      That alone let the held-out photographic identities' blinks fire at the chin (see
      the tried-and-not-kept part below): the rigid fit followed their lids. With its
      residuals Huber-weighted (`signals.rigid_motion`) it does not, and on the
      tuning seed F1 was 0.836, 0.706, 0.754 (false spots 0, 13, 7). Held-out seed
      (docs/spotting.md), before and after the three changes: photographic H.264 CRF 23
      0.651 to 0.687 at 200 fps, 0.687 to 0.730 at 30 fps; parametric FFV1 at 200 fps
      0.799 to 0.804; photographic FFV1 at 200 fps 0.847 to 0.891, at 30 fps 0.874 to
      0.935. The parametric faces' H.264 cells fell a little (200 fps: CRF 23 0.558 to
      0.541, CRF 28 0.268 to 0.208; 48 micro-expressions each, inside their intervals).
   e. Symmetric compensation: the head's rigid motion from the reference to the frame is
      undone by moving each of them half the way, so both are resampled (and blurred by
      the interpolation) alike. Measured on photographic faces in H.264 CRF 23 at 200 fps
      (tuning seed): without any expression, head drift was the main source of false
      spots (11 per minute with drift and light change, 2 without drift, 0 without
      either), because the residual after compensation is texture resampled differently;
      moving both halfway lowered the noise's 99th percentile from 0.145 to 0.139 px and
      raised the micro-expressions' signal at their apex from 0.107 to 0.126 px (median).
   f. Texture confidence: within a region, each pixel's flow counts by how well the
      reference's texture pins it down (`signals.texture_weight`: the structure tensor's
      smaller eigenvalue over 5 x 5 pixels, c / (c + the crop's median), measured again
      every 0.25 s). On flat skin the flow is what the coarse levels and the smoothness
      prior spread there, and a codec's blocks move it; where the texture is, the flow
      was measured. Measured on the tuning seed with the floors' one-frame weight of 1b
      (F1 without, with): photographic H.264 CRF 23 0.678, 0.689 at 200 fps and 0.789,
      0.810 at 30 fps; parametric FFV1 0.857, 0.850; photographic FFV1 0.855, 0.883 (64
      micro-expressions each). The two together against neither: 0.706 to 0.689, 0.754
      to 0.810, 0.836 to 0.850, 0.832 to 0.883. Held-out seed (docs/spotting.md): the
      headline cells 0.687 to 0.710 (photographic H.264 CRF 23, 200 fps), 0.730 to 0.745
      (30 fps) and 0.804 to 0.852 (parametric FFV1, 200 fps, false spots 2.05 to 1.11
      per minute); over the 36 cells the mean F1 rose from 0.686 to 0.702 (20 up, 16
      down): the parametric cells by 0.039 on average, the photographic ones fell by
      0.008 (their 48-micro-expression cells move by up to 0.04 either way).
   g. A stream's start: until a stream (or a segment after `reset`) has `lag_s` of frames,
      each frame is compared with its first frame, once that is `min_lag_s` old; and the
      running estimates of 1b and 3 are plain means of what was seen until their window
      (`noise_window_s`) has filled, then exponential: an exponential mean started from
      its first sample leans on that sample for seconds, and the deviation, started
      from 0, had reached a fifth of its value after 0.5 s. Before, nothing could start
      until `lag_s` + `warmup_s` (0.9 s) into a stream, and in SynthME's 20 s videos, as
      in short recordings, the first micro-expression often starts in that first second
      (held-out seed: 10 or 11 of the 152 of each headline cell, all missed). With it an
      interval can start from `min_lag_s` + `warmup_s` (0.4 s). Measured on the tuning
      seed (64 micro-expressions per cell; F1 photographic H.264 CRF 23 at 200 and at 30
      fps, parametric FFV1 at 200 fps): before 0.689, 0.810, 0.850; plain means first
      alone 0.672, 0.772, 0.839; with the first frame as the reference 0.705, 0.797,
      0.862; and the warm-up 0.3 s instead of 0.5 (kept) 0.705, 0.821, 0.862. Most of the
      early micro-expressions still missed at 200 fps are below the threshold, as the
      faint ones later in a video are.
   h. A GOP's start, as a stream's (`gop_reference`, on by default; `False` restores the
      spotter before it). A key frame re-codes the face's texture, so a comparison of a
      frame after it with a reference before it carries that texture step for as long as
      the reference stays behind it (`lag_s`: 0.4 s of every GOP of 1-2 s). From
      `min_lag_s` after the first frames whose averages (1a) lie wholly after the key
      frame (`denoise_s` + `reference_s` after it), the frames of a GOP are compared
      with those until the plain reference is in the GOP too: a shorter lag (0.1-0.4 s),
      the same codec state on both sides. Not while an interval is open (its rise is
      measured against one reference to its end), nor when a blink is near the key
      frame, nor in a stream of key frames only. Measured on the tuning seed (19 videos,
      152 micro-expressions per cell; F1, true and false spots): photographic H.264 CRF
      23 at 200 fps 0.703 (102, 36) to 0.746 (110, 33), at 30 fps 0.826 (114, 10) to
      0.840 (118, 11); the parametric FFV1 cell has no GOPs. An expression that began
      shortly before a key frame is compared with its own rise and is found smaller or
      missed; more were found than lost (`test_kernels`: the first 0.2-0.4 s of a GOP
      are as quiet as the rest of it). On the face without expression of `test_spotting`
      (photographic, H.264 CRF 28, 100 fps, 12 s), 6 false spots became 3. On the
      held-out matrix (docs/spotting.md), with `min_duration_s` 0.06 as well (step 5a):
      photographic H.264 CRF 23 at 200 fps F1 0.725 to 0.774 (false spots 6.79 to 4.26
      per minute), at 30 fps 0.790 to 0.815 (3.32 to 2.84); parametric FFV1 at 200 fps
      0.888 to 0.876 (the longer `min_duration_s`).
   i. The signal's rate (`measure_hz`, 100 Hz by default): every frame is cropped,
      denoised (1a) and kept (references, the pairs' crops), but the signal is measured
      (rigid fit, flow, regions: most of a frame's cost) at most `measure_hz`
      times a second of media time, so a 200 fps stream is compared every other frame and
      a 30 or 60 fps one at every frame. A micro-expression rises for 40 ms or more: four
      or more samples at 100 Hz, and the 30 fps cells, one sample per 33 ms, spot as well
      as the 200 fps ones. A frame is measured when at least three quarters of a period
      has passed since the last one (a 120 fps stream is measured at every frame, 240
      fps at every other). 0 measures every frame. Its cost on the held-out H.264 cells
      at 200 fps (with the tracker of the time, `mfvan spot-eval --data DIR --measure-hz
      0` against the default): photographic CRF 23 F1 0.774 to 0.758 (true spots 113 to
      111, false 27 to 30), CBR 0.909 to 0.901, H.265 0.899 either way, parametric CRF 23
      0.588 to 0.577: about 0.01 of F1, for the flow of every other frame.
2. Echo. `lag_s` later the expression is in the reference frame instead, and the same
   motion shows again, mirrored. A comparison whose reference falls inside an interval
   already seen (detected, or refused as too long or too large: real motion) is not
   trusted: no new interval starts on it.
   a. Blinks leave no echo: a frame whose eyes moved more than `blink_px` from a
      reference that was itself clear of blinks is marked as blinking, and a reference
      within `blink_margin_s` of a marked frame is not used: the newest frame before the
      blink is, up to `max_duration_s` further back. Measured on the tuning seed: half of
      the candidates refused as blinks were a blink's echo `lag_s` after it, and a
      micro-expression during an echo was refused with it (7 of 64 in the parametric
      cell). Taking the reference before the blink raised F1 from 0.700 to 0.778
      (parametric FFV1, 200 fps), 0.620 to 0.673 (photographic H.264 CRF 23, 30 fps) and
      0.566 to 0.571 (the same at 200 fps). The eyes' motion of a blink is 0.6-1.4 px
      (SynthME), at rest under 0.2 px (99th percentile) on photographic faces.
3. Threshold adapted to each stream: an exponential running mean and mean absolute
   deviation of the signal while the face is at rest (below mean + `z_quiet` x deviation;
   time constant `noise_window_s`). An interval starts when the signal rises more than
   max(`z` x deviation, `min_amplitude`) above the running mean.
4. The apex is the signal's maximum. It is confirmed once the signal has fallen back below
   `confirm_fraction` of the way from the mean to the peak; the interval is emitted then,
   without waiting for the offset, with the number of frames (and ns) that took. The
   edges are where a smooth (half-cosine) rise and fall through what was seen would
   start and end: the onset extrapolated back from the last frame before the apex at
   `edge_fraction` of the way up (read from the short signal history kept), the offset
   extrapolated forward from the fall seen until confirmation. A choice: SynthME's
   expressions have exactly that profile, and real ones (CASME II's onset-apex-offset
   annotations) a similar smooth one; the threshold crossings themselves would make every
   interval too short, and a short interval fails the IoU test.
5. Refused, and marked so that their echo is ignored too (they were real motion), then
   waited out until the face is at rest: intervals longer than `max_duration_s` from the
   onset to confirmation, or whose estimated extent (onset to offset) is over 1.1 times
   it (macro-expressions, slow drift; the 10% allows for the edge estimates), and peaks
   above `max_amplitude` (macro-expressions). Refused, with nothing blocked after them
   (they leave no motion in the reference frames), and a new interval may start as soon
   as the signal is below the start threshold again:
   a. blips, whose signal stayed above the start threshold for less than
      `min_duration_s` (temporal consistency: sensor noise, a key frame, block flicker
      flash for a frame or two; a micro-expression holds for tens of ms): 60 ms, was 40
      before step 1h. On the tuning seed (with step 1h, 19 videos), the time from the start
      crossing to confirmation was under 60 ms for 12 of the 33 false spots of
      photographic H.264 CRF 23 at 200 fps and for 3 of its 110 true ones, and F1 went
      from 0.746 (110 true, 33 false) to 0.774 (108, 19); at 30 fps nothing changes (a
      frame is 33 ms: two frames are 67 ms either way);
   b. blinks that reached the signal despite 1d: at the apex the eyes moved more than
      the region's ratio times it, however large the peak (a blink refused as a
      macro-expression, as before, blocked the 0.4 s after it: a micro-expression 0.1 s
      after a blink was lost, `test_kernels`);
   c. echoes, by a check that costs one more flow per interval: the motion from a frame
      before the onset (the estimated onset, or `verify_s` before the apex if that is
      earlier: a faint expression's noisy signal puts the estimate late, inside the rise)
      to the apex must be at least `verify_fraction` of the rise. An echo that slipped
      through step 2 (its original was never seen) fails it, because both frames are
      neutral frames after the original. Measured on the tuning seed: blocking after
      refused echoes and blinks (as before) hid 3 to 5 micro-expressions of 64 per cell.
6. The pair. An interval carries the two crops the recognizer classifies, taken from the
   spotter's own averaging rather than single decoded frames (`denoised_pairs`): the
   onset's is the reference the spotter would use there (the denoised crops of
   `reference_s` up to the onset: the face at rest, its noise averaged), the apex's the
   denoised crop whose `denoise_s` window is centred on the apex. A codec's texture
   noise, new in every frame, averages out of the pair's flow as it does of the signal.

Parameters are in seconds and in px of a 128 px crop (scaled with the crop), never in
frames, so the same settings work from 30 to 200 fps. Memory per stream is the crops of
the last `lag_s + max_duration_s` seconds plus a few numbers, whatever the stream's length.

Tried on the tuning seed and not kept: restarting the averages of 1a and 1c at each key
frame (fewer frames averaged after it: more false spots, 1 to 6 on parametric FFV1 and 17
to 21 on photographic H.264 at 200 fps); refusing an interval unless the mean of its rise
and of the echo check's measurement clears the start threshold (photographic H.264 at
200 fps: false spots 18 to 14, F1 0.622 to 0.632; parametric FFV1 and 30 fps lost 1-2
micro-expressions each); measuring the echo check from the apex's own GOP when a key
frame lies between (photographic H.264 at 200 fps: 6 of 37 micro-expressions lost, one
false spot less); each region's plain mean flow vector instead of its main direction
(photographic H.264 CRF 23 at 200 fps 0.622 to 0.602, at 30 fps 0.693 to 0.732,
parametric H.264 CRF 23 0.318 to 0.336: codec noise is coherent over a region, and an
expression that moves part of a region is diluted); carrying a key frame's texture step
across it (the key frame minus the denoised frame before it, added to the reference of
every comparison across that key frame, or taken from the newest frame when it is the
nearer of the two to the key frame): at 200 fps the luma of a face at rest changes by 0.12
grey levels from one predicted picture to the next and by 4.2 at a key frame, yet false
spots near key frames rose (photographic H.264 CRF 23, 200 fps: 12 to 21 and 20, F1 0.655
to 0.595 and 0.588; 30 fps: 4 to 12, F1 0.741 to 0.643): the step, measured where the
face was at the key frame, is noise where it is added, a fraction of a px away.
Holding the eyes still during a blink with the rigid fit weighting every pixel alike
(step 1d before the fit's Huber weights): while the eyes moved more than 0.35 px, the
regions measured again with the reference's eyes blended into the frame, no region left
out for the blink, and the head's brightness gain measured without the eyes (a lid over
the eye changes the crop's mean, and the rigid fit read the changed gain as head motion,
0.15-0.2 px at the mouth and chin). On the tuning seed it found more micro-expressions
during blinks (9 of the 27 missed in photographic H.264 CRF 23 at 200 fps had been
refused as blinks): F1 0.774 to 0.829 (parametric FFV1, 200 fps), 0.655 to 0.717 and
0.741 to 0.748 (photographic H.264 CRF 23 at 200 and 30 fps). On the held-out seed the
headline cells barely moved (0.799 to 0.801, 0.651 to 0.673, 0.687 to 0.691) while the
held-out photographic identities' blinks fired (the tuning seed has no photographic
FFV1 cell, and its photographic H.264 cell at 200 fps had no false spot at a blink; FFV1 at
200 fps: 0.5 to 4.0 false spots per minute, all blinks; F1 0.847 to 0.796; H.264 CRF 18
0.886 to 0.817, H.265 0.864 to 0.791): their blinks still reached the chin (7 of the 8
false spots at FFV1, 200 fps), where the masking of step 1d had caught them. Through the
rigid fit: in one of them (held-out `sub01_long01`, FFV1 at 200 fps, frames 478-496) the
fitted scale went from -0.1e-3 to +2.3e-3 and the rotation from 6.2e-3 to 11.2e-3 rad
while the eyes moved 1.3 px, and back after: about 0.1 px at the chin and the mouth
corners, 20-45 px from the centre, where the chin's motion reached 0.35 px (so the fit is
one path there, not shown to be the only one). The lids of that face reach the rigid
regions (temples, nose bridge); the fit's Huber weights were the fix (step 1d).
Counting a comparison as across a key frame when the key frame lies up to the
reference's averaging spans before the reference frame (steps 1a-1c: 95 ms), not only
after it: photographic H.264 CRF 23 at 200 fps 0.655 to 0.614 (false spots 12 to 15), at
30 fps 0.741 to 0.717. Confirming at 0.6 of the way down instead of 0.5 (sooner emission:
apex to emission p50 100 to 90 ms on parametric FFV1, 80 to 70 on photographic H.264 at
200 fps): F1 0.774 to 0.781, 0.655 to 0.632, 0.741 to 0.771; not settled on 64
micro-expressions per cell. Again with step 1g (photographic H.264 CRF 23 at 200 and 30
fps, parametric FFV1 and photographic FFV1 at 200 fps): 0.705 to 0.661 (false spots 15 to
19), 0.821 to 0.817, 0.862 to 0.864 and 0.911 to 0.911, apex to emission p50 100 to 88
and 90 ms on the two FFV1 cells: the FFV1 cells' latency would meet 100 ms, the
photographic H.264 cell at 200 fps would lose 4 false spots' worth of precision.
The start threshold at 5.5 deviations instead of 6 (with step 1g): 0.705 to 0.715, the
30 fps and parametric cells unchanged, photographic FFV1 0.911 to 0.902: on these cells
the threshold is mostly `min_amplitude` above the mean, not `z` deviations.
And `min_amplitude` 0.04 px instead of 0.05: 0.705 to 0.657 (false spots 15 to 26), 0.821
to 0.787 (5 to 13), 0.862 to 0.872, 0.911 to 0.913: codec noise's excursions reach just
above 0.05 px over the floor, the lossless cells' do not.
Correcting each comparison for its reference frame's own codec displacement, estimated
by chaining the earlier comparisons `lag_s` apart (v(t) + the mean of the partial sums
of v(t - k lag_s), k = 1..K, which telescopes to the displacement from the mean of K
older frames): measured offline on the regions' main-direction vectors of the tuning
photographic H.264 CRF 23 cell at 200 fps, the micro-expressions above the quiet frames'
99.5th percentile fell from 51 of 60 (K = 0) to 40, 31, 25, 20 (K = 1..4); not built.
A floor per position of the reference in its GOP: on the same cell the regions' resting
motion is 0.063-0.069 px (largest region, mean) whatever the reference's position within
a GOP and 0.072-0.076 across a key frame, which the two GOP states of step 1b already
tell apart; not built.
Taking a key frame's own flow out of the comparisons across it (the flow domain's
version of carrying its texture step: the flow from the reference image of the frame
before the key frame to the first frame whose denoising window lies wholly after it,
measured once per key frame and subtracted from every comparison across it, times the
share of the reference's averaged frames before the key frame; the first frames after
it repeated the measurement of the frame before): photographic H.264 CRF 23 at 200 fps
0.706 to 0.583 (false spots 13 to 21), at 30 fps 0.754 to 0.690 (7 to 10). One
measurement, with its own noise, subtracted from every comparison of the 0.4 s after
it, leaves that noise as a lasting offset in a region, which is what the start test
fires on (our reading; not measured further). Starting no interval, and leaving the
floors alone, while a key frame lies inside one of a comparison's averages (the
reference's 70 ms, or the newest frame's denoising and smoothing, 45 ms): neither
within one GOP nor across a key frame, such a comparison carries part of its texture
step. Measured together with the floors' one-frame weight (step 1b): photographic
H.264 CRF 23 at 200 fps 0.678 to 0.689 (false spots 16 to 14), at 30 fps 0.789 to 0.776
(5 to 7): no change that 64 micro-expressions can show. Scaling the comparisons
across a key frame down to the noise within one GOP as well (step 1b's typical
deviation, the smaller of the two states'): photographic H.264 CRF 23 at 200 fps, the
same intervals as without it, so across a key frame the regions were not the noisier by
that measure; what fires there is not a wider spread.

Imports nothing of this project.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from . import flow as _flow
from . import signals as _signals

REJECTIONS = ("macro", "long", "blink", "short", "echo")  # `Spotter.rejected`'s reasons


class _Frame(NamedTuple):
    """A buffered frame."""

    index: int
    ns: int  # media time
    crop: np.ndarray  # uint8, as tracked (what a pair carries)
    image: np.ndarray  # float32, denoised (step 1a)
    key_frame: bool


class _Sample(NamedTuple):
    """A frame's spotting signal, kept for the onset search."""

    index: int
    ns: int
    signal: float


class _Span(NamedTuple):
    """Media time of an interval seen, its margins included (step 2)."""

    start_ns: int
    end_ns: int


class _Sum(NamedTuple):
    """The running sum of the reference's window of denoised crops (step 1a)."""

    first_ns: int
    last_ns: int
    total: np.ndarray  # float64


@dataclass(frozen=True)
class SpotterParams:
    lag_s: float = 0.4  # the reference frame is this far back
    noise_window_s: float = 2.0  # time constant of the running noise estimate
    warmup_s: float = 0.3  # signal seen before the first interval can start (step 1g)
    min_lag_s: float = 0.1  # a stream's first lag_s: its first frame is the reference (1g)
    fast_start: bool = True  # running estimates: plain means until their window fills (1g)
    z: float = 6.0  # start threshold, in deviations above the running mean
    z_quiet: float = 2.0  # below this the face is at rest (onset search, noise update)
    min_amplitude: float = 0.05  # px (128 px crop) above the running mean, at least
    max_amplitude: float = 0.8  # px: above this it is a macro-expression
    min_duration_s: float = 0.06  # above the start threshold to confirmation, at least
    max_duration_s: float = 0.5  # onset to confirmation (and offset) at most this long
    confirm_fraction: float = 0.5  # the apex is confirmed when the signal falls below this
    edge_fraction: float = 0.2  # onset and offset: this far up from the mean to the peak
    block_margin_s: float = 0.1  # an echo's reference this close to a seen interval: ignored
    blink_ratio: float = 1.5  # eyes' motion above this times a region next to them: a blink
    blink_far_ratio: float = 5.0  # ... times a region far from them (mouth, chin)
    blink_px: float = 0.35  # eyes' motion above this (px, 128 px crop): a blink, step 2a
    blink_margin_s: float = 0.1  # a reference this close to a blink is not used
    verify_fraction: float = 0.3  # onset-to-apex motion at least this part of the rise
    verify_s: float = 0.2  # ... measured from the onset or this long before the apex
    region_floors: bool = True  # each region measured against its own noise floor
    denoise_s: float = 0.02  # crops averaged over this much media time before the flow
    reference_s: float = 0.05  # the reference: denoised crops averaged over this much time
    smooth_s: float = 0.025  # regions' motion averaged over this much media time
    still_eyes_px: float = 0.35  # eyes moving more than this: regions measured eyes held still
    confidence: bool = True  # each pixel's flow weighted by the reference's texture (1f)
    gop_reference: bool = True  # a key frame restarts the reference, as a stream's start (1h)
    measure_hz: float = 100.0  # the signal is measured at most this often (1i; 0: every frame)
    denoised_pairs: bool = True  # a pair's crops from the denoised frames (step 6), not raw
    flow: _flow.FlowParams = field(default_factory=_flow.FlowParams)


@dataclass
class Interval:
    """One spotted micro-expression. Frame indices are the stream's; times its timestamps."""

    onset: int
    apex: int
    offset: int  # estimated at emission (see the module's step 4)
    onset_ns: int
    apex_ns: int
    offset_ns: int
    score: float  # peak signal / start threshold
    amplitude: float  # peak signal, px of a 128 px crop
    region: str  # the region that moved most at the apex
    emitted: int  # frame index at which the interval was emitted
    latency_frames: int  # emitted - apex
    latency_ns: int
    onset_crop: np.ndarray  # the crops to classify (uint8; denoised, step 6)
    apex_crop: np.ndarray


@dataclass
class _Candidate:
    onset: int
    onset_ns: int
    apex: int
    apex_ns: int
    peak: float
    threshold: float
    region: int
    eyes_at_peak: float
    peak_px: float  # the region's own motion at the peak, px
    floor_px: float  # the region's resting level when the interval started
    delay_ns: int = 0  # how late the averaged signal was at the peak (step 1c)


class Spotter:
    """Feed crops with `push`; it returns the intervals confirmed by that crop (usually
    none). `rejected` counts what it refused, by reason."""

    def __init__(self, params: SpotterParams | None = None, flow_fn=None):
        """`flow_fn(first, second) -> (H, W, 2)` replaces our dense flow (benchmarks use it
        to run the same spotter on OpenCV's flow)."""
        self.params = params or SpotterParams()
        self._flow_fn = flow_fn or (lambda a, b: _flow.dense_flow(a, b, self.params.flow))
        self.rejected = dict.fromkeys(REJECTIONS, 0)
        self.frames = 0
        self.last_signal = float("nan")  # the latest frame's signal (for traces)
        self._size = None
        self._version = None
        self._buffer: deque[_Frame] = deque()  # the recent frames
        self._keys = 0  # key frames in the buffer
        self._ref_sum: _Sum | None = None  # the reference's running sum (`_reference_image`)
        self._last_key_ns = 0  # the newest key frame's time
        self._blocked: deque[_Span] = deque()  # intervals seen (with their margins)
        self._blinks: deque = deque()  # ns of the frames whose eyes blinked (step 2a)
        self._mean = None
        self._dev = 0.0
        self._seen_ns = 0
        self._count = 0  # samples in the noise estimate (step 1g)
        self._history: deque[_Sample] = deque()  # the recent frames' signal
        self._prev_ns = 0
        self._measured_ns = None  # the last frame that passed the rate gate (1i)
        self._gate_ns = None  # the one before it (a frame at rest's weight, 1b)
        self._falling_since = 0
        self._last_ns = None
        self._candidate: _Candidate | None = None
        # after an interval or a refused motion: the level the signal must fall to before
        # another interval can start (rest, or below the start threshold), else None
        self._falling: str | None = None
        self._floors: list = [None, None]  # per GOP state: (mean, dev) per region, samples
        self._tex = None  # (ns, the reference's texture weight), step 1f
        self._recent: deque = deque()  # (ns, float crop) of the denoising window
        self._motions: deque = deque()  # (ns, regions' motion, eyes') of the smoothing window
        self._recent_sum = None

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the frames (a new crop geometry, or a gap in the stream); the noise
        estimate is kept."""
        self._buffer.clear()
        self._keys = 0
        self._ref_sum = None
        self._recent.clear()
        self._recent_sum = None
        self._motions.clear()
        self._blocked.clear()
        self._blinks.clear()
        self._history.clear()
        self._candidate = None
        self._falling = None
        self._tex = None
        self._measured_ns = self._gate_ns = None

    def state_size(self) -> int:
        """Frames held now (bounded by the stream's rate times lag + max duration)."""
        return len(self._buffer) + len(self._blocked) + len(self._history) + len(self._blinks)

    def _setup(self, size: int) -> None:
        self._size = size
        self._floors = [None, None]
        self._scale = 128.0 / size
        names = _signals.SIGNAL_ROIS
        self._signal_boxes = _signals.roi_boxes(size, names)
        self._signal_names = names
        p = self.params
        self._blink_ratios = np.array(
            [p.blink_ratio if n in _signals.NEAR_EYES else p.blink_far_ratio for n in names],
            np.float32,
        )
        self._eye_boxes = _signals.roi_boxes(size, ("eye_left", "eye_right"))
        self._rigid_boxes = _signals.roi_boxes(size, _signals.RIGID)
        self._eye_weight = _eye_weight(size, self._eye_boxes)
        # the head's brightness gain is measured without the eyes (a blink changes theirs)
        self._gain_weight = 1 - _eye_weight(size, self._eye_boxes, 0.03, 0.04)

    # -- the work -------------------------------------------------------------------------
    def push(
        self,
        crop: np.ndarray,
        index: int,
        timestamp_ns: int,
        version: int = 0,
        key_frame: bool = False,
    ):
        """One aligned grey crop (square uint8 or float), its frame index and media time.
        `version` changes when the crop geometry changes (`faces.FaceTracker.version`):
        crops of different geometry are never compared. `key_frame`: the decoder marked the
        frame as intra-coded (a GOP boundary). Returns a list of `Interval`."""
        if crop.ndim != 2 or crop.shape[0] != crop.shape[1]:
            raise ValueError(f"Spotter.push needs a square 2-D grey crop, got {crop.shape}")
        if self._size != crop.shape[0]:
            self._setup(crop.shape[0])
            self.reset()
        if version != self._version or (
            self._last_ns is not None and timestamp_ns <= self._last_ns
        ):
            self._version = version
            self.reset()
        self._last_ns = timestamp_ns
        self.frames += 1
        p = self.params
        lag_ns = int(p.lag_s * 1e9)
        image = self._denoised(np.asarray(crop, dtype=np.float32), timestamp_ns)
        self._buffer.append(_Frame(index, timestamp_ns, crop, image, key_frame))
        if key_frame:
            self._keys += 1
            self._last_key_ns = timestamp_ns
        keep_ns = int((p.lag_s + p.max_duration_s) * 1e9) + lag_ns // 4
        while self._buffer and self._buffer[0].ns < timestamp_ns - keep_ns:
            self._keys -= self._buffer.popleft().key_frame
        while self._blocked and self._blocked[0].end_ns < timestamp_ns - keep_ns:
            self._blocked.popleft()
        while self._history and self._history[0].ns < timestamp_ns - keep_ns:
            self._history.popleft()
        while self._blinks and self._blinks[0] < timestamp_ns - keep_ns:
            self._blinks.popleft()
        if (
            p.measure_hz
            and self._measured_ns is not None
            and timestamp_ns - self._measured_ns < 0.75e9 / p.measure_hz
        ):
            return []  # kept, not measured (step 1i)
        self._gate_ns, self._measured_ns = self._measured_ns, timestamp_ns
        reference, clear = self._reference_open(timestamp_ns - lag_ns)
        if reference is None and timestamp_ns - self._buffer[0].ns >= p.min_lag_s * 1e9:
            # the stream's (or the segment's) first lag_s: its first frame (step 1g)
            reference, clear = self._buffer[0], True
        if p.gop_reference and self._candidate is None:
            own = self._gop_reference(timestamp_ns)
            if own is not None and (reference is None or own.ns > reference.ns):
                reference, clear = own, True
        if reference is None:
            self.last_signal = float("nan")
            return []
        ref_ns, ref_image = reference.ns, self._reference_image(reference.ns)
        main, eyes, still = self._measure(ref_image, image)
        main, eyes = self._smoothed(main, eyes, timestamp_ns)
        if clear and eyes > p.blink_px:
            self._blinks.append(timestamp_ns)
        gop = self._gop_state(ref_ns)
        # regions measured with the eyes held still (step 1d) have no blink in them
        seen = 0.0 if still else eyes
        signal, region = self._normalise(main, gop, seen)
        self.last_signal = signal
        trusted = not any(a <= ref_ns <= b for a, b in self._blocked)
        found = self._step(index, timestamp_ns, signal, region, seen, trusted, main)
        if self._candidate is None and signal <= self._thresholds()[0]:
            self._update_floors(main, gop, timestamp_ns)
        return found

    def _denoised(self, image: np.ndarray, ns: int) -> np.ndarray:
        """The mean of the crops of the last `denoise_s` of media time (step 1a): sensor
        and codec noise that changes from frame to frame averages out, a micro-expression
        (40 ms or more to its apex) barely blurs. At 30 fps it is the crop itself."""
        window = self._recent
        window.append((ns, image))
        self._recent_sum = image.copy() if self._recent_sum is None else self._recent_sum + image
        while len(window) > 1 and window[0][0] <= ns - self.params.denoise_s * 1e9:
            self._recent_sum -= window.popleft()[1]
        return np.ascontiguousarray(self._recent_sum / np.float32(len(window)))

    def _smoothed(self, main: np.ndarray, eyes: float, ns: int):
        """Each region's motion and the eyes', averaged over the last `smooth_s` of media
        time (step 1c): a peak is where the motion is, not where one frame's noise topped
        it, and the fall after it is the expression's, not the noise's."""
        window = self._motions
        window.append((ns, main, eyes))
        while len(window) > 1 and window[0][0] <= ns - self.params.smooth_s * 1e9:
            window.popleft()
        if len(window) == 1:
            return main, eyes
        # summed in order, as np.mean would (the same bits, without its overhead)
        n = len(window)
        return sum(m for _, m, _ in window) / np.float32(n), sum(e for _, _, e in window) / n

    def _delay_ns(self, ns: int) -> int:
        """How late the averaged signal of the frame at `ns` (the newest) is: half the
        spans of the denoising and smoothing windows (steps 1a, 1c)."""
        return (ns - self._recent[0][0] + ns - self._motions[0][0]) // 2

    def _reference_open(self, at_ns: int):
        """The reference frame for a frame `lag_s` after `at_ns` (step 2a): the newest frame
        at or before `at_ns` not within `blink_margin_s` of a blink, going back at most
        `max_duration_s`. Returns (the buffered frame or None, whether it is clear of
        blinks; when no frame is, or the buffer does not reach back to one, the one at
        `at_ns`)."""
        p = self.params
        margin = int(p.blink_margin_s * 1e9)
        earliest = at_ns - int(p.max_duration_s * 1e9)
        at = at_ns
        while at >= earliest:
            near = self._blinks_near(at)
            if not near:
                found = self._reference(at)
                if found is None:
                    break  # the buffer does not reach back that far (a stream's first second)
                return found, True
            at = min(near) - margin - 1
        return self._reference(at_ns), False

    def _gop_reference(self, ns: int):
        """The first frame of the newest GOP whose denoised and averaged reference lies
        wholly after its key frame, once it is `min_lag_s` old (step 1h); None for a
        stream without GOPs or when a blink is near it."""
        p = self.params
        if not self._has_gops():
            return None
        at = self._last_key_ns + int((p.denoise_s + p.reference_s) * 1e9)
        if ns - at < p.min_lag_s * 1e9:
            return None
        if self._blinks_near(at):
            return None
        return self._reference(at)

    def _blinks_near(self, at: int) -> list:
        """The marked blinks (step 2a) within `blink_margin_s` of `at`."""
        margin = int(self.params.blink_margin_s * 1e9)
        return [b for b in self._blinks if b - margin <= at <= b + margin]

    def _reference_image(self, ns: int) -> np.ndarray:
        """The mean of the denoised crops of the `reference_s` up to `ns`, the one at `ns`
        (a buffered frame's time) always included (step 1a)."""
        buffer = self._buffer
        end = bisect.bisect_right(buffer, ns, key=_ns_of)
        start = min(
            bisect.bisect_right(buffer, ns - self.params.reference_s * 1e9, key=_ns_of), end - 1
        )
        first, last = buffer[start].ns, buffer[end - 1].ns
        cached = self._ref_sum  # the previous frame's
        if (
            cached is not None
            and buffer[0].ns <= cached.first_ns <= first <= cached.last_ns <= last
        ):
            # the window slid forward: the frames that left it out, the new ones in (in
            # float64 the sums of float32 crops are exact, so nothing accumulates)
            total = cached.total
            for k in range(bisect.bisect_left(buffer, cached.first_ns, key=_ns_of), start):
                total -= buffer[k].image
            for k in range(bisect.bisect_right(buffer, cached.last_ns, key=_ns_of), end):
                total += buffer[k].image
        else:
            total = np.zeros(buffer[start].image.shape, np.float64)
            for k in range(start, end):
                total += buffer[k].image
        self._ref_sum = _Sum(first, last, total)
        return (total / (end - start)).astype(np.float32)

    def _reference(self, at_ns: int):
        """The newest buffered frame at or before `at_ns`, if the buffer reaches back."""
        k = bisect.bisect_right(self._buffer, at_ns, key=_ns_of)
        return self._buffer[k - 1] if k else None

    def _measure(self, ref: np.ndarray, cur: np.ndarray):
        """Each signal region's main-direction motion (px of a 128 px crop) from `ref` to
        `cur`, head motion undone; the eyes' largest; and whether the regions were measured
        with the eyes held still (step 1d)."""
        rigid = _signals.rigid_motion(ref, cur, self._rigid_boxes, weight=self._gain_weight)
        # each image is moved half the way, so both are resampled alike (step 1e)
        a, b = _signals.warp_halves(ref, cur, rigid)
        flow = self._flow_fn(a, b)
        eye_stats = _signals.roi_stats(flow, self._eye_boxes)
        eyes = float(np.hypot(eye_stats[:, 1], eye_stats[:, 2]).max()) * self._scale
        still = eyes > self.params.still_eyes_px
        if still:
            # the eyes moved (a blink): the regions are measured again with the eyes
            # held still, the reference's eyes in the frame, so that no motion of theirs
            # reaches the regions through the flow's coarse levels
            w = self._eye_weight
            flow = self._flow_fn(a, np.ascontiguousarray(b * (1 - w) + a * w))
        texture = self._texture(a) if self.params.confidence else None  # step 1f
        stats = _signals.roi_stats(flow, self._signal_boxes, texture)
        main = np.hypot(stats[:, 1], stats[:, 2]) * self._scale
        return main, eyes, still

    def _texture(self, image: np.ndarray) -> np.ndarray:
        """The texture weight of the reference (`signals.texture_weight`), measured again
        every 0.25 s of media time (the face's texture barely changes in between)."""
        ns = self._last_ns
        if self._tex is None or ns - self._tex[0] > 250_000_000 or ns < self._tex[0]:
            self._tex = (ns, _signals.texture_weight(image))
        return self._tex[1]

    def _gop_state(self, ref_ns: int) -> int:
        """1 when a key frame lies between the reference and the newest frame (coded in
        different GOPs, whose codec noise differs), else 0; always 0 for an intra-only
        stream (FFV1, MJPEG: every frame a key frame) or one without key-frame flags."""
        return int(self._has_gops() and self._last_key_ns > ref_ns)

    def _has_gops(self) -> bool:
        """Whether the frames kept have key frames among predicted pictures (not an
        intra-only stream, nor one without key-frame flags)."""
        return 0 < self._keys <= len(self._buffer) // 2

    def _normalise(self, main: np.ndarray, gop: int, eyes: float) -> tuple[float, int]:
        """The spotting signal: each region's motion above its own resting floor, scaled
        down by the ratio of its noise to a typical region's when it is noisier, then the
        largest region (step 1b of the module's method), leaving out the regions a blink
        reaches while the eyes move more than their ratio times them (step 1d). Until the
        floors exist, the raw largest motion."""
        blinking = eyes > self._blink_ratios * main
        if blinking.all():
            blinking[:] = False
        if not self.params.region_floors or self._floors[gop] is None:
            region = int(np.argmax(np.where(blinking, -np.inf, main)))
            return float(main[region]), region
        mean, dev, _ = self._floors[gop]
        typical = float(_median(dev))
        # noisier regions are scaled down to a typical one; quiet ones are never scaled up
        # (a flat region's codec blocks would be amplified)
        scaled = (main - mean) * np.minimum(1.0, typical / np.maximum(dev, 1e-6))
        region = int(np.argmax(np.where(blinking, -np.inf, scaled)))
        return float(scaled[region] + _median(mean)), region

    def _update_floors(self, main: np.ndarray, gop: int, ns: int) -> None:
        """Each region's resting mean and mean absolute deviation, one pair per GOP state:
        exponential means over `noise_window_s`, of samples clipped at mean + 3 deviations
        (an expression that slipped under the threshold barely moves them)."""
        floors = self._floors[gop]
        # one frame's weight: the time since the frame before (the one measured before,
        # 1i), however long this state was out of use (the other GOP state's frames, an
        # open interval)
        dt = (ns - self._gate_ns) * 1e-9 if self._gate_ns is not None else 0.0
        if floors is None:
            self._floors[gop] = (main.copy(), np.full_like(main, 0.2 * float(main.mean())), 1)
            return
        mean, dev, count = floors
        rate = min(1.0, dt / self.params.noise_window_s)
        if self.params.fast_start:
            rate = max(rate, 1 / (count + 1))  # a plain mean until the window has filled (1g)
        self._floors[gop] = (mean, dev, count + 1)
        x = np.minimum(main, mean + 3 * dev)
        mean += rate * (x - mean)
        dev += rate * (np.abs(x - mean) - dev)

    def threshold(self) -> float:
        """The current start threshold (nan before the noise estimate exists)."""
        return self._thresholds()[0] if self._mean is not None else float("nan")

    def _thresholds(self) -> tuple[float, float]:
        p = self.params
        start = self._mean + max(p.z * self._dev, p.min_amplitude)
        quiet = self._mean + p.z_quiet * self._dev
        return start, min(quiet, start)

    def _update_noise(self, ns: int, signal: float) -> None:
        p = self.params
        if self._mean is None:
            self._mean, self._dev, self._seen_ns, self._count = signal, 0.0, 0, 1
        else:
            dt = max(ns - self._prev_ns, 0)
            self._seen_ns += dt
            # falls fast, rises slowly: a start inside an expression (or a calm face after
            # a long one) must not hold the threshold high for seconds. Until the window
            # has filled, both are the plain mean's weight (step 1g)
            up = min(1.0, dt * 1e-9 / p.noise_window_s)
            down = min(1.0, 8 * up)
            if p.fast_start:
                self._count += 1
                up, down = max(up, 1 / self._count), max(down, 1 / self._count)
            alpha = up if signal > self._mean else down
            self._mean += alpha * (signal - self._mean)
            dev = abs(signal - self._mean)
            self._dev += (up if dev > self._dev else down) * (dev - self._dev)
        self._prev_ns = ns

    def _block(self, start_ns: int, end_ns: int) -> None:
        margin = int(self.params.block_margin_s * 1e9)
        self._blocked.append(_Span(start_ns - margin, end_ns + margin))

    def _step(self, index, ns, signal, region, eyes, trusted, main):
        p = self.params
        self._history.append(_Sample(index, ns, signal))
        if self._mean is None or self._seen_ns < p.warmup_s * 1e9:
            self._update_noise(ns, signal)
            return []
        start, quiet = self._thresholds()
        c = self._candidate
        if c is None:
            # the noise estimate follows the signal whenever no interval is open, clipped a
            # little above the resting level (a Huber-like update: a macro-expression or a
            # long head turn barely moves it, while a baseline that really rises is
            # followed, slowly); a rejected motion is waited out until the face is at rest
            # or for at most `max_duration_s`
            clip = self._mean + max(p.z_quiet * self._dev, 0.5 * p.min_amplitude)
            self._update_noise(ns, min(signal, clip))
            level = quiet if self._falling == "rest" else start
            if signal <= level or ns - self._falling_since > p.max_duration_s * 1e9:
                self._falling = None
            if self._falling or not trusted or signal <= start:
                return []
            self._candidate = _Candidate(
                onset=index,
                onset_ns=ns,
                apex=index,
                apex_ns=ns,
                peak=signal,
                threshold=start,
                region=region,
                eyes_at_peak=eyes,
                peak_px=float(main[region]),
                floor_px=self._floor_of(region),
                delay_ns=self._delay_ns(ns),
            )
            return []
        if signal > c.peak:
            c.peak, c.apex, c.apex_ns, c.region, c.eyes_at_peak = signal, index, ns, region, eyes
            c.peak_px, c.floor_px = float(main[region]), self._floor_of(region)
            c.delay_ns = self._delay_ns(ns)
        rise = c.peak - self._mean
        edge = self._mean + p.edge_fraction * rise
        onset = self._onset(c.apex, edge)
        reason = None
        blink = c.eyes_at_peak > self._blink_ratios[c.region] * c.peak_px
        if c.peak > p.max_amplitude:
            # a blink that reached the signal is a blink, however large: it leaves no
            # motion to wait out or echo to ignore (a macro-expression does)
            reason = "blink" if blink else "macro"
        elif onset is None or (ns - onset[1]) * 1e-9 > p.max_duration_s:
            reason = "long"
        if reason is None and signal >= self._mean + p.confirm_fraction * rise:
            return []
        self._candidate = None
        self._falling, self._falling_since = "rest", ns
        if reason is None and blink:
            reason = "blink"
        # temporal consistency: a micro-expression holds its region's motion for tens of
        # ms; sensor noise, a codec's key frame or block flicker flash for a frame or two
        if reason is None and (ns - c.onset_ns) * 1e-9 < p.min_duration_s:
            reason = "short"
        if reason is None:
            # an echo (or a motion that started before the onset) does not hold between a
            # frame before the interval's onset and its apex, in the region's own px above
            # its own floor; a micro-expression does. The frame: the onset as estimated, or
            # `verify_s` before the apex if that is earlier (a faint expression's noisy
            # signal puts the estimated onset late, inside the rise)
            before = self._image_before(min(onset[1], c.apex_ns - int(p.verify_s * 1e9)))
            moved = self._measure(before, self._image_at(c.apex))[0]
            if moved[c.region] - c.floor_px < p.verify_fraction * (c.peak_px - c.floor_px):
                reason = "echo"
        if reason is None:
            # onset and offset where a half-cosine rise and fall through the levels seen
            # would start and end
            level = min(max((signal - self._mean) / rise, 0.0), 0.99)
            back = 1 / (1 - _cosine_time(p.edge_fraction))
            ahead = 1 / (1 - _cosine_time(level))
            onset = (
                max(c.apex - round((c.apex - onset[0]) * back), self._history[0].index),
                max(c.apex_ns - round((c.apex_ns - onset[1]) * back), self._history[0].ns),
            )
            offset = c.apex + round((index - c.apex) * ahead)
            offset_ns = c.apex_ns + round((ns - c.apex_ns) * ahead)
            # a motion whose whole extent, as estimated, is longer than a micro-expression
            # (a macro-expression's part, a slow drift), with 10% allowed for the estimate
            if (offset_ns - onset[1]) * 1e-9 > 1.1 * p.max_duration_s:
                reason = "long"
        if reason is not None:
            self.rejected[reason] += 1
            # only a real motion that was refused leaves an echo to ignore, and is waited
            # out; a blip, a blink (its echo is a blink again) or an echo leave nothing in
            # the reference frames that could fire later
            if reason in ("macro", "long"):
                self._block(onset[1] if onset else c.onset_ns, ns)
            else:
                self._falling = "start"
            return []
        self._block(onset[1], offset_ns)
        # the averaging windows (steps 1a, 1c) make the signal late by half their span:
        # the interval is moved back by that much, to the frame nearest
        apex, apex_ns = self._frame_near(c.apex_ns - c.delay_ns)
        shift, shift_ns = c.apex - apex, c.apex_ns - apex_ns
        return [
            Interval(
                onset=onset[0] - shift,
                apex=apex,
                offset=offset - shift,
                onset_ns=onset[1] - shift_ns,
                apex_ns=apex_ns,
                offset_ns=offset_ns - shift_ns,
                score=c.peak / c.threshold,
                amplitude=c.peak,
                region=self._signal_names[c.region],
                emitted=index,
                latency_frames=index - apex,
                latency_ns=ns - apex_ns,
                onset_crop=self._pair_crop(onset[0] - shift, before=True),
                apex_crop=self._pair_crop(apex),
            )
        ]

    def _frame_near(self, ns: int) -> tuple[int, int]:
        """(index, ns) of the kept frame whose time is nearest `ns`."""
        index, at = min(((i, t) for i, t, *_ in self._buffer), key=lambda it: abs(it[1] - ns))
        return index, at

    def _floor_of(self, region: int) -> float:
        floors = self._floors[0] if self._floors[0] is not None else self._floors[1]
        return 0.0 if floors is None else float(floors[0][region])

    def _onset(self, apex: int, edge: float):
        """(index, ns) of the last frame before `apex` whose signal was at most `edge`, or
        None when the history holds none (the rise began too long ago)."""
        for index, ns, signal in reversed(self._history):
            if index < apex and signal <= edge:
                return index, ns
        return None

    def _item_at(self, index: int):
        for item in self._buffer:
            if item.index >= index:
                return item
        return self._buffer[-1]

    def _pair_crop(self, index: int, before: bool = False) -> np.ndarray:
        """The crop a pair carries for frame `index` (step 6): with `denoised_pairs`, the
        onset's is the reference the spotter would compare with there (its denoised crops
        of `reference_s` up to it: the face at rest), the apex's the denoised crop whose
        window is centred on it; otherwise the frame as tracked."""
        item = self._item_at(index)
        if not self.params.denoised_pairs:
            return item.crop
        if before:
            image = self._reference_image(item.ns)
        else:
            image = self._item_at_ns(item.ns + int(self.params.denoise_s * 5e8)).image
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def _item_at_ns(self, ns: int):
        """The newest kept frame at or before `ns` (the oldest kept if none)."""
        return self._reference(ns) or self._buffer[0]

    def _image_at(self, index: int) -> np.ndarray:
        return self._item_at(index).image

    def _image_before(self, ns: int) -> np.ndarray:
        """The denoised crop of the newest frame at or before `ns` (the oldest kept if none)."""
        return self._item_at_ns(ns).image


def _eye_weight(size: int, boxes: np.ndarray, margin: float = 0.0, ramp: float = 0.02):
    """A (size, size) float32 weight: 1 over the eye boxes grown by `margin`, falling to 0
    over `ramp` (fractions of the crop) around them."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    weight = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0) / size - margin
        dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0) / size - margin
        d = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        weight = np.maximum(weight, np.clip(1 - d / ramp, 0, 1))
    return weight


_ns_of = attrgetter("ns")  # a buffered frame's time


def _median(x: np.ndarray):
    """np.median of a short float32 vector, the same value without its overhead."""
    s = np.sort(x)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / np.float32(2)


def _cosine_time(level: float) -> float:
    """Where, as a fraction of its duration, a half-cosine rise 0 -> 1 reaches `level`."""
    return math.acos(1 - 2 * level) / math.pi


PARTS = ("flow", "signals")  # what `warm_up` can compile apart, in two processes


def warm_up(size: int = 128, part: str | None = None) -> None:
    """Compile (or load from Numba's on-disk cache) what the live spot stage runs, and only
    that: one measurement of a pair of `size` px crops as `Spotter.push` makes it (rigid fit
    with the eyes' weight, dense flow, the eyes held still, the texture weight, the regions'
    statistics with and without it) and one pair's flow (`motion.pair_flow`). Exercising
    the real calls compiles exactly the type signatures they use, which calling each kernel
    with made-up arguments would not.

    `part` compiles one half only: "flow" the dense flow, "signals" the rest (the same
    calls with the flow stubbed out), so that two processes can share a first compile
    (`mfvan warm-up --jobs 2`); each half's signatures are those of the whole."""
    from . import motion

    if part not in (None, *PARTS):
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    rng = np.random.default_rng(0)
    ref = rng.random((size, size), dtype=np.float32) * 255
    if part == "flow":
        _flow.dense_flow(ref, np.roll(ref, 1, axis=1), SpotterParams().flow)
        return
    stub = (lambda a, b: np.zeros((*a.shape, 2), np.float32)) if part == "signals" else None
    spotter = Spotter(flow_fn=stub)
    spotter._setup(size)
    spotter._last_ns = 0
    spotter._measure(ref, np.roll(ref, 1, axis=1))
    eyes = spotter._eye_weight > 0  # move the eyes: the measurement with them held still
    spotter._measure(ref, np.where(eyes, np.roll(ref, 3, axis=0), ref).astype(np.float32))
    if part is None:  # its rigid fit and warp are `_measure`'s signatures, its flow too
        motion.pair_flow(ref.astype(np.uint8), np.roll(ref, 1, axis=0).astype(np.uint8))


def compiled() -> dict:
    """The kernels' state in Numba's cache after a warm-up: {"kernels": dispatchers that
    ran, "loaded": signatures loaded from the cache, "compiled": signatures compiled in this
    process, "cache": where the cache is}."""
    from numba.core.registry import CPUDispatcher

    from . import flow, signals

    loaded = built = kernels = 0
    where = None
    for module in (flow, signals):
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and obj.signatures:
                kernels += 1
                stats = obj.stats
                loaded += sum(stats.cache_hits.values())
                built += sum(stats.cache_misses.values())
                where = where or stats.cache_path
    return {"kernels": kernels, "loaded": loaded, "compiled": built, "cache": where}
