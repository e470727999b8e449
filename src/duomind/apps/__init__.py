"""Applications built on the DuoMind core (speech, medical, urban spatial). The core never imports them."""
