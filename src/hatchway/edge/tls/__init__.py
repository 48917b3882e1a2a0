"""Certificates at the edge: the dev CA store now; ACME and bring-your-own certificates later."""
