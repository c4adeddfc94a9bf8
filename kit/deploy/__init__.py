"""Running the kit elsewhere: OCI images (`image`) and cluster job files (`cluster`)."""
