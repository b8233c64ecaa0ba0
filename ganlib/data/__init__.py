"""Datasets in, prepared stores out.

- ``sources``: finding, fingerprinting and reading every kind of source (torchvision datasets,
  image folders, npz/IDX arrays, the embedded digits), and downloading torchvision's;
- ``imaging``: decoding and transforming one image (numpy and Pillow only: runs in workers);
- ``writer``: streaming ``.npy`` files and the bounded, ordered parallel map;
- ``store``: ``prepare_dataset`` (the common preparation), ``load_store``, the store's layout;
- ``preview``: the grid of real images left next to each store;
- ``loader``: the batch order of an epoch (``BatchOrder``) and training batches, resident on the device
  or streamed from disk;
- ``idx``, ``digits``: the IDX format and the digit generator.
"""
