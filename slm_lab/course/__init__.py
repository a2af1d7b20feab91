"""The tools behind the `slm-lab` command that run the course: doctor, make-labs, grade, slides."""
