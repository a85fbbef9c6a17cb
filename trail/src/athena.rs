//! Athena: the same search as SQL over the trail bucket, for trails too big for one machine.
