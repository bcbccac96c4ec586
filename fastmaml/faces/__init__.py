"""The faces the field already knows, over the algorithms: the kata functions (kata.py:
maml_inner_update / maml_outer_update), the BOML-style Init class (boml.py), and the learn2learn-,
higher- and TorchOpt-shaped faces (compat/, public as fastmaml.compat)."""
