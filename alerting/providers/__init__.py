"""Notification providers: template SMS (Aliyun, Tencent Cloud, a generic gateway), voice calls, webhooks."""
