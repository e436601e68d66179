# The compiled extension module: importing it registers the ops torch.ops.infomax_ext.*; it
# exports no Python names.
