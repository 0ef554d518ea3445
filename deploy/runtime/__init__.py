"""Running the pipeline's parts: what every stage process shares (`stage`), `mfvan run`'s
supervisor (`supervisor`), flags from TOML files and the environment (`config`), the
`synth://` camera (`synth_source`), and the same parts over recorded files (`analyze`).
"""
