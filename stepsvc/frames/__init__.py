"""Images on the wire: what a step receives and sends, as pixels, bytes or shared memory.

``codec`` (messages <-> NumPy, PNG/JPEG), ``wire`` (messages as bytes: parse the header, view
the pixels), ``shm`` (frames in shared memory between co-located steps), ``outgoing`` (the
frame for the next step). Imports ``native.registry`` and the loose stepsvc modules only.
"""
