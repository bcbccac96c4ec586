"""Drop-in faces for code written against other meta-learning libraries: change one import and
the inner loop runs on fastmaml's fused update (fastmaml.ops.update), with the same gradients.

    import fastmaml.compat.learn2learn as l2l        # l2l.algorithms, l2l.data, l2l.vision, l2l.nn, ...
    import fastmaml.compat.higher as higher          # higher.innerloop_ctx(model, SGD optimizer)
    import fastmaml.compat.torchopt as torchopt      # torchopt.MetaSGD, extract/recover_state_dict

Each face is imported on its own (`import fastmaml.compat` loads none of them). What each covers
and what it does not: docs/migration/{learn2learn,higher,torchopt}.md.
"""

__all__ = ["higher", "learn2learn", "torchopt"]
