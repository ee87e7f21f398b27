"""Raw-data side of the pipeline and the contract with the trainers.

`datasets/` holds one spec per data set (the registry); the format readers
(`cifar10`, `mnist`, `imagefolder`) turn raw files into `records`; `schema`
defines the shard bytes and the typed metadata.json (the one contract with the
trainers); `augment` the one table of augmentation ops. `download` and `sample_data`
write raw data; `cli`, `atomic`, `hashing` and `fileio` are shared helpers.

Everything here is plain Python (numpy, Pillow, the standard library): no Beam,
and TensorFlow only inside the functions that need it (augment's ops,
schema.parse_example), so the Beam job in `pipeline/` and the trainers in
`trainers/` can both import it, and it can be tested without a runner.
"""
