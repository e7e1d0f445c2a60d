"""The streaming commit: a container saved by reading its overlay upper dir once.

:mod:`.save` chooses it or the engine's commit for a save; :mod:`.commit` runs it;
:mod:`.overlay_layer` reads the upper dir as a layer tar; :mod:`.codecs` compresses it;
:mod:`.layer_push` hashes and uploads it in one pass; :mod:`.base_image` finds (or pushes
once) the base image the new layer goes on top of.
"""
