"""Expire old experiment objects: one lifecycle rule on the state bucket (the chart's retention Job).

The rule (id ``mmfl-retention``) deletes objects under ``PREFIX/`` of ``BUCKET`` ``DAYS`` days after
they were written; ``DAYS=0`` removes the rule. Other rules of the bucket are kept (an S3
lifecycle configuration is replaced as a whole, and a shared bucket such as Kubeflow's
``mlpipeline`` has rules of its own). Works on any S3 server with lifecycle support (MinIO,
SeaweedFS, AWS S3). Environment: S3_ENDPOINT (host:port), S3_SECURE, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, BUCKET, PREFIX, DAYS. Needs the ``minio`` client (in the mmfl image).
"""

import os
import sys

RULE_ID = "mmfl-retention"


def apply_retention(client, bucket: str, prefix: str, days: int) -> list[tuple[str, str, int | None]]:
    """Set (days > 0) or remove (days == 0) the rule; returns the bucket's rules as (id, prefix, days)."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    if days < 0:
        raise ValueError(f"objectStore.retentionDays = {days}: must be 0 (keep everything) or a number of days")
    current = client.get_bucket_lifecycle(bucket)
    rules = [r for r in (current.rules if current else []) if r.rule_id != RULE_ID]
    if days > 0:
        key_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        rules.append(Rule(ENABLED, rule_filter=Filter(prefix=key_prefix), rule_id=RULE_ID,
                          expiration=Expiration(days=days)))
    if rules:
        client.set_bucket_lifecycle(bucket, LifecycleConfig(rules))
    elif current is not None:
        client.delete_bucket_lifecycle(bucket)
    after = client.get_bucket_lifecycle(bucket)
    return [(r.rule_id, r.rule_filter.prefix if r.rule_filter else "", r.expiration.days if r.expiration else None)
            for r in (after.rules if after else [])]


def main() -> int:
    from minio import Minio

    env = os.environ
    client = Minio(env["S3_ENDPOINT"], access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                   secure=env.get("S3_SECURE", "false").lower() == "true")
    bucket, prefix, days = env["BUCKET"], env.get("PREFIX", ""), int(env["DAYS"])
    try:
        rules = apply_retention(client, bucket, prefix, days)
    except Exception as exc:  # one line for the Job log, whatever the S3 server answered
        print(f"error: lifecycle rule on bucket {bucket!r}: {exc}", file=sys.stderr)
        return 1
    print(f"bucket {bucket!r} lifecycle rules: {rules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
