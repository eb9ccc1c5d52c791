"""Routes that act on a stored trajectory beside reading it: the whole-run zip
download, labels, archiving, and Jetty's own ``/api/v1/db`` list and stats."""
