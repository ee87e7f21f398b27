"""Raw-data side of the pipeline: readers, the TFRecord schema, augmentation policy.

Everything here is plain Python (numpy, Pillow, the standard library): no Beam and
no TensorFlow, so the Beam job in `pipeline/` and the trainers in `trainers/` can
both import it, and it can be tested without a runner.
"""
