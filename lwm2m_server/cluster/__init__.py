"""Several server nodes on one database: membership, the UDP balancer in front."""
