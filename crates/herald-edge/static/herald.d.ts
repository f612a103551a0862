// herald.d.ts: placeholder
