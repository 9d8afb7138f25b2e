"""The S3-compatible test server's bucket, as the object-store tests see it (kept out of
conftest.py: `from conftest import ...` finds another directory's conftest first when the
whole suite runs)."""

from __future__ import annotations

__all__ = ["S3Bucket"]


class S3Bucket:
    """A fresh versioned bucket on the test's S3-compatible server, and the environment that
    points a process at it the way a pod's credentials Secret does (botocore and s3fs read
    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""

    def __init__(self, name: str, env: dict[str, str], requests: list[str]) -> None:
        import boto3
        import s3fs

        self.name = name
        self.env = env
        self._requests = requests
        self.client = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        self.client.create_bucket(Bucket=name)
        # Every PUT leaves a version: tests can tell how often an object was written.
        self.client.put_bucket_versioning(Bucket=name,
                                          VersioningConfiguration={"Status": "Enabled"})
        self.fs = s3fs.S3FileSystem(
            key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True, use_listings_cache=False)

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def keys(self, prefix: str) -> list[str]:
        """Keys of the objects under `prefix/` now, relative to it, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix.rstrip("/") + "/")
        return sorted(o["Key"][len(prefix.rstrip("/")) + 1:]
                      for page in pages for o in page.get("Contents", []))

    def puts(self, prefix: str) -> list[str]:
        """Keys under `prefix/` in the order the server received their PUT requests."""
        import re

        path = re.escape(f"/{self.name}/{prefix.rstrip('/')}/")
        return [m.group(1) for line in list(self._requests)
                if (m := re.search(rf'"PUT {path}(\S+) HTTP', line))]

    def versions(self, prefix: str) -> dict[str, list[dict]]:
        """Every version and delete marker of each key under `prefix/`, oldest first."""
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.name, Prefix=prefix.rstrip("/") + "/")
        found: dict[str, list[dict]] = {}
        for page in pages:
            for kind in ("Versions", "DeleteMarkers"):
                for v in page.get(kind, []):
                    found.setdefault(v["Key"][len(prefix.rstrip("/")) + 1:], []).append(
                        {**v, "deleted": kind == "DeleteMarkers"})
        return {k: sorted(v, key=lambda x: x["LastModified"]) for k, v in found.items()}
