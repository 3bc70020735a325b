"""OneNET security mode (安全模式): AES-128-CBC known answers from OpenSSL, and encrypted pushes end to end."""

from __future__ import annotations

import json

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from gasguard.protocol import AlarmEvent, Channel, Topics, decode_event
from gateway.nbiot import OnenetDecryptError, onenet_decrypt
from gateway.settings import GatewaySettings
from simulator.nbiot_platforms import PlatformSimulator, encrypt_onenet
from tests.gateway.conftest import Bus, running_gateway, wait_for
from tests.gateway.test_nbiot import make_nb
from tests.support.rows import add_household

# The key of OneNET's receiver sample; the push instance page shows one like it (16 characters).
KEY = "AAlvB3jc2dlPq2nF"
PLAIN = '{"at":1466133706841,"type":1,"imei":"862592050000001","dev_id":2016617,"ds_id":"alarm","value":2}'
# Produced by OpenSSL, not by the code under test:
#   printf %s "$PLAIN" | openssl enc -aes-128-cbc -K 41416c7642336a6332646c5071326e46 \
#       -iv 41416c7642336a6332646c5071326e46 -base64 -A
SEALED = (
    "6CPg6x+8hCDs0R9vG5LVc9ZZiH5R/DLc69snDI+VH6qG+Cp5lh8/TrQfmDpYs9G/8+bG46tO3P/AOsCv1Zt4SgF8d3Frq7oEKr+IOkml"
    "oKQwH7HHUW8VYtVRRUJ/OtAcTM7UUTcz+5qTJHUsYLMIvw=="
)


def test_decrypts_the_openssl_known_answer() -> None:
    """Test the gateway against ciphertext made by OpenSSL with the key as key and IV, PKCS#7 padding."""
    assert onenet_decrypt(SEALED, KEY) == PLAIN


def test_simulated_platform_encrypts_to_the_same_known_answer() -> None:
    """Test the simulator's security mode against the same vector (deterministic: the IV is the key)."""
    assert encrypt_onenet(KEY, PLAIN) == SEALED


@pytest.mark.parametrize(
    ("msg", "key"),
    [
        (SEALED, "BBlvB3jc2dlPq2nF"),  # another instance's key: the padding does not check out
        (SEALED[:-8] + "AAAAAA==", KEY),  # corrupted last block
        ("not base64!", KEY),
        (SEALED[:20], KEY),  # not a whole number of blocks
    ],
)
def test_garbage_is_a_decrypt_error(msg: str, key: str) -> None:
    """Test that wrong keys and damaged text raise `OnenetDecryptError`, never return junk silently."""
    with pytest.raises(OnenetDecryptError):
        onenet_decrypt(msg, key)


async def test_encrypted_push_becomes_event_and_plaintext_is_dead_lettered(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    """Test a security-mode instance end to end: signed ciphertext in, alarm event out; plaintext refused."""
    home = await add_household(db, 1)
    imei = await make_nb(db, home.alarm_id, "onenet")
    settings = gateway_settings.model_copy(update={"onenet_aes_key": SecretStr(KEY)})
    async with running_gateway(settings), httpx.AsyncClient() as client:
        plain = await platforms.onenet_datapoint(client, imei=imei, dev_id=1, ds_id="alarm_status", value=2)
        assert plain.status_code == 400, "a plaintext push to a security-mode instance is not taken"
        platforms.onenet_aes_key = KEY
        sealed = await platforms.onenet_datapoint(
            client, imei=imei, dev_id=1, ds_id="alarm", value={"Alarm_Status": 2, "Gas_LEL": 27.5}
        )
        assert sealed.status_code == 200, sealed.text
        forged = await platforms.onenet_push(
            client, {"at": 1, "type": 1, "imei": imei, "dev_id": 1, "ds_id": "alarm_status", "value": 0}, forge=True
        )
        assert forged.status_code == 403, "encrypted with the right key but signed without the token"
        event_topic = topics.device(home.alarm_id, Channel.EVENT)

        async def event_out() -> bool:
            return bool(bus.on(event_topic))

        await wait_for(event_out)
    event = decode_event(bus.on(event_topic)[0])
    assert isinstance(event, AlarmEvent) and (event.state, event.lel) == ("high_alarm", 27.5)
    letter = await db.fetchrow("SELECT reason, payload FROM dead_letter WHERE source = 'gateway'")
    assert letter is not None and letter["reason"] == "plaintext msg while security mode is configured"
    assert json.loads(letter["payload"])["msg"]["value"] == 2
